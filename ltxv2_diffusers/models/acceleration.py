"""Speed and memory levers for training the LTX-2 transformer on a GPU.

Each lever is a function that changes a diffusers `LTX2VideoTransformer3DModel` in place (or wraps
its trainable parameters) without touching diffusers' code, so the model stays the stock class
that saves, loads and samples like any other. Figures for each lever are in benchmarks/RESULTS.md.

- `compile_blocks`: `torch.compile` each transformer block (regional compilation: one graph reused
  by all 48 blocks, so it compiles once). Fuses RoPE, RMSNorm, modulation and gates and removes
  most of the per-op launch overhead that dominates the eager step.
- `MasterWeights`: LoRA parameters compute in bf16 (no autocast casts, no fp32 copies of
  activations in peft) while the optimizer updates fp32 master copies.
- `quantize_base_weights`: frozen base `nn.Linear` weights stored as int8 with one scale per
  output row and dequantized to bf16 on use (forward, recompute and input-gradient), halving the
  weights' memory at bf16 matmul speed.
- `BlockSwapper`: the weights of the last N blocks live in pinned CPU memory and are copied to the
  GPU on a side stream one block ahead of use, in both the forward and the backward direction.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# ---- regional compilation -------------------------------------------------------------------------


def compile_blocks(transformer: nn.Module, dynamic: bool = False, mode: str | None = None) -> int:
    """`torch.compile` every transformer block's `forward` in place; returns how many were compiled.

    Only `forward` is compiled, not the module call, so module hooks (the block swapper's weight
    prefetch) run eagerly around the compiled code instead of being traced into it.
    """
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise TypeError(f"{type(transformer).__name__} has no transformer_blocks to compile")
    for block in blocks:
        block.forward = torch.compile(block.forward, dynamic=dynamic, mode=mode)
    return len(blocks)


# ---- bf16 compute with fp32 master weights --------------------------------------------------------


class MasterWeights:
    """Trainable parameters compute in `compute_dtype`; the optimizer steps fp32 master copies.

    Use: build the optimizer over `master_params`, then per optimizer step call
    `grads_to_master()` after the backward passes, step, and `master_to_model()`. Gradient
    accumulation happens in the model parameters' dtype between those calls, so call
    `grads_to_master(accumulate=True)` after each micro-batch to keep accumulation in fp32.
    """

    def __init__(self, params: Iterable[nn.Parameter], compute_dtype: torch.dtype = torch.bfloat16):
        self.model_params = [p for p in params if p.requires_grad]
        self.master_params = [nn.Parameter(p.detach().float().clone()) for p in self.model_params]
        for p in self.model_params:
            p.data = p.data.to(compute_dtype)

    @torch.no_grad()
    def grads_to_master(self, accumulate: bool = False) -> None:
        """Move model gradients into the fp32 masters (summing into existing ones when accumulating)."""
        for p, m in zip(self.model_params, self.master_params):
            if p.grad is None:
                continue
            g = p.grad.float()
            if accumulate and m.grad is not None:
                m.grad.add_(g)
            else:
                m.grad = g
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Copy the updated fp32 masters into the compute-dtype model parameters."""
        torch._foreach_copy_([p.data for p in self.model_params], [m.data for m in self.master_params])

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.master_params]

    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for m, t in zip(self.master_params, tensors):
                m.copy_(t)
        self.master_to_model()


# ---- int8 weight-only storage of the frozen base ----------------------------------------------------


class _Int8Linear(torch.autograd.Function):
    """y = x @ dequant(q)^T + b, saving the int8 weight (not a bf16 copy) for the input gradient."""

    @staticmethod
    def forward(ctx, x, qweight, scale, bias):
        w = qweight.to(x.dtype) * scale.to(x.dtype)[:, None]
        ctx.save_for_backward(qweight, scale)
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out):
        qweight, scale = ctx.saved_tensors
        w = qweight.to(grad_out.dtype) * scale.to(grad_out.dtype)[:, None]
        return grad_out @ w, None, None, None


class Int8WeightLinear(nn.Module):
    """A frozen `nn.Linear` whose weight is int8 with a per-output-row absmax scale."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(torch.float32))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.compute_dtype = w.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (materialized on demand; training never calls this)."""
        return (self.qweight.float() * self.scale[:, None]).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _Int8Linear.apply(x, self.qweight, self.scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_base_weights(transformer: nn.Module, min_features: int = 256) -> int:
    """Replace the frozen `nn.Linear`s inside the transformer blocks (PEFT base layers included) by
    `Int8WeightLinear`; LoRA matrices and small layers stay as they are. Returns the count."""
    count = 0
    for block in transformer.transformer_blocks:
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if not isinstance(child, nn.Linear) or child.weight.requires_grad:
                    continue
                if "lora_" in f"{name}.{child_name}" or min(child.in_features, child.out_features) < min_features:
                    continue
                setattr(module, child_name, Int8WeightLinear(child))
                count += 1
    return count


# ---- block swapping ----------------------------------------------------------------------------------


class BlockSwapper:
    """Keep the frozen tensors of the last `num_blocks` transformer blocks in pinned CPU memory.

    A block's tensors are copied to the GPU on a side stream while the previous block computes
    (forward: block i prefetches i+1; backward recompute runs blocks in reverse, so block i
    prefetches i-1) and dropped again once the pass moved past it. Trainable (LoRA) parameters
    always stay on the GPU. Works with gradient checkpointing, which re-runs a block's forward
    right before its backward.
    """

    def __init__(self, transformer: nn.Module, num_blocks: int, device: torch.device | str = "cuda"):
        blocks = list(transformer.transformer_blocks)
        if not 0 < num_blocks < len(blocks):
            raise ValueError(f"--blocks_to_swap must be between 1 and {len(blocks) - 1} (got {num_blocks})")
        self.device = torch.device(device)
        self.blocks = blocks
        self.first_swapped = len(blocks) - num_blocks
        self.stream = torch.cuda.Stream(self.device)
        self.cpu: dict[int, list[tuple[nn.Module, str, torch.Tensor]]] = {}
        self.events: dict[int, torch.cuda.Event] = {}
        self.resident: set[int] = set()
        self.last: int | None = None
        for i in range(self.first_swapped, len(blocks)):
            self.cpu[i] = self._offload(blocks[i])
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._make_hook(i))

    def _frozen_tensors(self, block: nn.Module):
        for module in block.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and not p.requires_grad:
                    yield module, name, p
            for name, b in list(module._buffers.items()):
                if b is not None:
                    yield module, name, b

    def _offload(self, block: nn.Module) -> list[tuple[nn.Module, str, torch.Tensor]]:
        entries = []
        for module, name, t in self._frozen_tensors(block):
            host = t.detach().to("cpu").pin_memory()
            entries.append((module, name, host))
            t.data = torch.empty(0, dtype=t.dtype, device=self.device)
        return entries

    def _prefetch(self, i: int) -> None:
        if i not in self.cpu or i in self.resident:
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for module, name, host in self.cpu[i]:
                t = module._parameters[name] if name in module._parameters else module._buffers[name]
                t.data = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.events[i] = event
        self.resident.add(i)

    def _release(self, i: int) -> None:
        if i not in self.cpu or i not in self.resident:
            return
        for module, name, _ in self.cpu[i]:
            t = module._parameters[name] if name in module._parameters else module._buffers[name]
            # The compute stream may still read it; tell the allocator before dropping the storage.
            t.data.record_stream(torch.cuda.current_stream(self.device))
            t.data = torch.empty(0, dtype=t.dtype, device=self.device)
        self.resident.discard(i)

    def _make_hook(self, i: int):
        def hook(module, args):
            backward = self.last is not None and i < self.last
            self._prefetch(i)
            event = self.events.pop(i, None)
            if event is not None:
                torch.cuda.current_stream(self.device).wait_event(event)
            if self.last is not None and self.last != i:
                self._release(self.last)
            self._prefetch(i - 1 if backward else i + 1)
            self.last = i
            return None

        return hook

    def reset(self) -> None:
        """Call between steps so the next forward starts in the forward direction."""
        if self.last is not None:
            self._release(self.last)
        self.last = None
