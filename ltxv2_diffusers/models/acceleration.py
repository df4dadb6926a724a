"""Speed and memory levers for training the LTX-2 transformer on a GPU.

Each lever is a function that changes a diffusers `LTX2VideoTransformer3DModel` in place (or wraps
its trainable parameters) without touching diffusers' code, so the model stays the stock class
that saves, loads and samples like any other. Figures for each lever are in benchmarks/RESULTS.md.

- `compile_blocks`: `torch.compile` each transformer block (regional compilation: one graph reused
  by all 48 blocks, so it compiles once). Fuses RoPE, RMSNorm, modulation and gates and removes
  most of the per-op launch overhead that dominates the eager step. With a recompute policy or
  an activation memory budget the compiled block also does its own activation checkpointing:
  its backward graph recomputes only what backward needs, fused with the backward kernels, and
  keeps what the policy says (`keep_attention_policy`).
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


_ATTENTION_OPS = tuple(
    getattr(torch.ops.aten, name).default
    for name in ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name)
)


def keep_attention_policy(min_attention_pairs: int = 1 << 24):
    """Selective-recompute policy: what a compiled block keeps for backward instead of recomputing.

    Keeps the outputs of attentions with at least `min_attention_pairs` query-key pairs; at
    768x512x121 that is only the video self-attention, one video-sized tensor per block (2.3 GiB
    over 48 blocks) that spares its forward recomputation, the most expensive op per byte kept
    (-40 ms/step on an H100, benchmarks/RESULTS.md). Everything else is recomputed inside the
    block's compiled backward.
    """
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        if op in _ATTENTION_OPS and args[0].shape[-2] * args[1].shape[-2] >= min_attention_pairs:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


def compile_blocks(transformer: nn.Module, dynamic: bool = False, mode: str | None = None, *,
                   recompute_policy=None, activation_memory_budget: float | None = None,
                   backend: str = "inductor") -> int:
    """`torch.compile` every transformer block's `forward` in place; returns how many were compiled.

    Only `forward` is compiled, not the module call, so module hooks (the block swapper's weight
    prefetch) run eagerly around the compiled code instead of being traced into it. Calling it
    again recompiles from the eager `forward` (after `torch._dynamo.reset()`).

    Activation checkpointing inside the compiled block (use with diffusers' own gradient
    checkpointing off): the block's backward graph recomputes what it needs, fused with the backward
    kernels, instead of re-running the whole forward. `recompute_policy` (a selective-checkpoint
    policy such as `keep_attention_policy()`, or one per block, None for a block that keeps
    everything) says what to keep; or `activation_memory_budget` (0..1) lets the partitioner choose
    (0: keep only the block's inputs; 1: keep all it would). Blocks sharing a policy share one graph.
    """
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise TypeError(f"{type(transformer).__name__} has no transformer_blocks to compile")
    if activation_memory_budget is not None and not 0.0 <= activation_memory_budget <= 1.0:
        raise ValueError(f"activation_memory_budget must lie in [0, 1], got {activation_memory_budget}")
    if recompute_policy is not None and activation_memory_budget is not None:
        raise ValueError("give either a recompute policy or an activation memory budget, not both")
    policies = recompute_policy if isinstance(recompute_policy, (list, tuple)) else [recompute_policy] * len(blocks)
    if len(policies) != len(blocks):
        raise ValueError(f"got {len(policies)} recompute policies for {len(blocks)} blocks")
    for block, policy in zip(blocks, policies):
        eager = vars(block).setdefault("_ltx_eager_forward", block.forward)
        target = eager if policy is None else _selectively_checkpointed(eager, policy)
        compiled = torch.compile(target, dynamic=dynamic, mode=mode, backend=backend)
        block.forward = compiled if activation_memory_budget is None else _with_budget(compiled, activation_memory_budget)
    return len(blocks)


def _selectively_checkpointed(forward, policy):
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    def context():
        return create_selective_checkpoint_contexts(policy)

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context, **kwargs)

    return checkpointed


def _with_budget(compiled, budget: float):
    # The partitioner reads the budget when a graph is (re)compiled, which happens inside the call.
    def forward(*args, **kwargs):
        with torch._functorch.config.patch(activation_memory_budget=budget):
            return compiled(*args, **kwargs)

    return forward


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
        pairs = [(p, m) for p, m in zip(self.model_params, self.master_params) if p.grad is not None]
        if not pairs:
            return
        fresh = [(p, m) for p, m in pairs if not accumulate or m.grad is None]
        summed = [(p, m) for p, m in pairs if accumulate and m.grad is not None]
        # One multi-tensor kernel per group instead of one launch per parameter (there are ~2k).
        if fresh:  # one allocation, viewed per parameter
            flat = torch.empty(sum(m.numel() for _, m in fresh), dtype=torch.float32, device=fresh[0][1].device)
            for view, (_, m) in zip(flat.split([m.numel() for _, m in fresh]), fresh):
                m.grad = view.view_as(m)
            torch._foreach_copy_([m.grad for _, m in fresh], [p.grad for p, _ in fresh])
        if summed:
            torch._foreach_add_([m.grad for _, m in summed], [p.grad for p, _ in summed])  # adds in fp32
        for p, _ in pairs:
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


def evenly_spaced(num_blocks: int, count: int) -> list[int]:
    """`count` of the indices 0..num_blocks-1, spread evenly."""
    if not 0 < count <= num_blocks:
        raise ValueError(f"can spread between 1 and {num_blocks} of {num_blocks} blocks (got {count})")
    return sorted({int((k + 0.5) * num_blocks / count) for k in range(count)})


def spread_blocks(num_blocks: int, count: int) -> list[int]:
    """`count` block indices spread evenly over blocks 1..num_blocks-2 (first and last stay resident)."""
    inner = num_blocks - 2
    if not 0 < count <= inner:
        raise ValueError(f"can spread between 1 and {inner} of {num_blocks} blocks (got {count})")
    return [1 + i for i in evenly_spaced(inner, count)]


def available_host_memory() -> int | None:
    """Bytes of host memory available now (Linux), or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_host_memory(needed: int, num_blocks: int, available: int | None = None) -> None:
    """Refuse to swap when the host copies would not fit in the memory the host has free."""
    available = available_host_memory() if available is None else available
    if available is not None and needed > 0.9 * available:
        raise ValueError(f"--blocks_to_swap {num_blocks} keeps {needed / 2**30:.1f} GiB of weights in host memory, but "
                         f"only {available / 2**30:.1f} GiB is available; swap fewer blocks or free host memory")


class _HostCopy:
    """The frozen tensors (parameters without grad, buffers) of one block, in one host buffer.

    `fetch()` copies the whole block to `device` in one transfer (pinned memory, asynchronous on the
    current stream when the device is CUDA) and points every tensor at its slice of the device copy;
    `drop()` points them at empty tensors again, which frees the device copy once the stream that
    used it is done. The module objects and parameter identities never change, so optimizers,
    hooks and tensors autograd saved for backward keep working.
    """

    _ALIGN = 64

    @classmethod
    def bytes_needed(cls, block: nn.Module) -> int:
        return sum(-(-t.numel() * t.element_size() // cls._ALIGN) * cls._ALIGN for _, _, t in cls._frozen_tensors(block))

    def __init__(self, block: nn.Module, device: torch.device):
        self.device = device
        self.entries: list[tuple[nn.Module, str, torch.dtype, torch.Size, int, int]] = []
        offset = 0
        tensors = []
        for module, name, t in self._frozen_tensors(block):
            nbytes = t.numel() * t.element_size()
            self.entries.append((module, name, t.dtype, t.shape, offset, nbytes))
            tensors.append(t)
            offset += -(-nbytes // self._ALIGN) * self._ALIGN
        self.nbytes = offset
        self.host = torch.empty(offset, dtype=torch.uint8)
        if device.type == "cuda":
            self.host = self.host.pin_memory()
        for (module, name, dtype, shape, start, nbytes), t in zip(self.entries, tensors):
            self.host[start:start + nbytes].view(dtype).view(shape).copy_(t.detach().to("cpu"))
        self.device_copy: torch.Tensor | None = None
        self.drop(None)

    @staticmethod
    def _frozen_tensors(block: nn.Module):
        for module in block.modules():
            for name, p in list(module._parameters.items()):
                if p is not None and not p.requires_grad:
                    yield module, name, p
            for name, b in list(module._buffers.items()):
                if b is not None:
                    yield module, name, b

    @staticmethod
    def _tensor(module: nn.Module, name: str) -> torch.Tensor:
        return module._parameters[name] if name in module._parameters else module._buffers[name]

    def fetch(self) -> None:
        if self.device.type == "cuda":
            flat = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
            flat.copy_(self.host, non_blocking=True)
        else:
            flat = self.host.clone()  # a separate storage, freed on drop like a device copy
        for module, name, dtype, shape, start, nbytes in self.entries:
            self._tensor(module, name).data = flat[start:start + nbytes].view(dtype).view(shape)
        self.device_copy = flat

    def drop(self, stream) -> None:
        if self.device_copy is not None and stream is not None:
            self.device_copy.record_stream(stream)
        self.device_copy = None
        empty: dict[torch.dtype, torch.Tensor] = {}
        for module, name, dtype, _, _, _ in self.entries:
            if dtype not in empty:
                empty[dtype] = torch.empty(0, dtype=dtype, device=self.device)
            self._tensor(module, name).data = empty[dtype]


class BlockSwapper:
    """Keep the frozen tensors of some transformer blocks in pinned CPU memory.

    A swapped block's tensors are copied to the GPU in one transfer on a side stream while earlier
    blocks compute and dropped again once the pass moved past it; trainable (LoRA) parameters always
    stay on the GPU. (On a CPU device the same logic runs with synchronous copies, for tests.) Two ways to learn that backward needs a block again:

    - `rerun_in_backward=True` (whole-block gradient checkpointing re-runs each block's forward
      right before its backward): the last `num_blocks` blocks are swapped and the forward pre-hook
      of the re-run fetches them, prefetching the block before it.
    - `rerun_in_backward=False` (compiled blocks recompute inside their own backward, or nothing is
      recomputed): `num_blocks` blocks spread over the model are swapped (`spread_blocks`). A block
      is dropped right after its forward, and a gradient hook on its output fetches it back before
      its backward runs (prefetching the next `backward_prefetch` swapped blocks down); it then stays on the GPU into the
      next step's forward. So memory is freed where it peaks, between forward and backward, and each
      swapped block crosses the host link once per step, during backward, which is twice as long as
      forward. Autograd saved the parameters themselves, whose storage the swapper replaces in
      place, so backward reads the fetched copy.
    """

    def __init__(self, transformer: nn.Module, num_blocks: int, device: torch.device | str = "cuda", *,
                 rerun_in_backward: bool = True, backward_prefetch: int = 2):
        blocks = list(transformer.transformer_blocks)
        if not 0 < num_blocks < len(blocks) - (0 if rerun_in_backward else 1):
            limit = len(blocks) - (1 if rerun_in_backward else 2)
            raise ValueError(f"--blocks_to_swap must be between 1 and {limit} (got {num_blocks})")
        self.device = torch.device(device)
        self.blocks = blocks
        self.rerun_in_backward = rerun_in_backward
        # Swapped blocks fetched ahead in backward: one copy (~15 ms for a full-size block) may take
        # longer than one block's backward, so two in flight keep the link busy without stalls.
        self.backward_prefetch = backward_prefetch
        swapped = (range(len(blocks) - num_blocks, len(blocks)) if rerun_in_backward
                   else spread_blocks(len(blocks), num_blocks))
        self.swapped = sorted(swapped)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        check_host_memory(sum(_HostCopy.bytes_needed(blocks[i]) for i in self.swapped), num_blocks)
        self.stores = {i: _HostCopy(blocks[i], self.device) for i in self.swapped}
        self.events: dict[int, torch.cuda.Event] = {}
        self.resident: set[int] = set()
        self.last: int | None = None
        self._handles = []
        for i, block in enumerate(blocks):
            if rerun_in_backward:
                self._handles.append(block.register_forward_pre_hook(self._make_rerun_hook(i)))
            else:
                self._handles.append(block.register_forward_pre_hook(self._make_forward_hook(i)))
                self._handles.append(block.register_forward_hook(self._make_backward_trigger(i)))

    def _prefetch(self, i: int) -> None:
        if i not in self.stores or i in self.resident:
            return
        if self.cuda:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                self.stores[i].fetch()
                event = torch.cuda.Event()
                event.record(self.stream)
            self.events[i] = event
        else:
            self.stores[i].fetch()
        self.resident.add(i)

    def _ensure(self, i: int) -> None:
        """Make block i's tensors usable by the work queued next on the compute stream."""
        self._prefetch(i)
        event = self.events.pop(i, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def _release(self, i: int) -> None:
        if i not in self.stores or i not in self.resident:
            return
        # The compute stream may still read it; tell the allocator before dropping the storage.
        self.stores[i].drop(torch.cuda.current_stream(self.device) if self.cuda else None)
        self.resident.discard(i)
        self.events.pop(i, None)

    def _next_swapped(self, i: int, step: int, count: int = 1) -> list[int]:
        later = sorted((j for j in self.swapped if (j - i) * step > 0), key=lambda j: abs(j - i))
        return later[:count]

    def _make_rerun_hook(self, i: int):
        def hook(module, args):
            backward = self.last is not None and i < self.last
            self._ensure(i)
            if self.last is not None and self.last != i:
                self._release(self.last)
            self._prefetch(i - 1 if backward else i + 1)
            self.last = i
            return None

        return hook

    def _make_forward_hook(self, i: int):
        def hook(module, args):
            self._ensure(i)
            for j in [j for j in self.resident if j < i]:
                self._release(j)
            for j in self._next_swapped(i, +1):
                self._prefetch(j)
            return None

        return hook

    def _make_backward_trigger(self, i: int):
        def on_grad(grad):
            self._ensure(i)
            for j in self._next_swapped(i, -1, self.backward_prefetch):  # blocks above stay for the next forward
                self._prefetch(j)
            return None

        def hook(module, args, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            for t in outputs:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    t.register_hook(on_grad)
                    break
            return None

        return hook

    def remove(self) -> None:
        """Bring every swapped block back to the device for good and remove the hooks."""
        for i in self.swapped:
            self._ensure(i)
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.stores.clear()
        self.resident.clear()

    def reset(self) -> None:
        """Call between steps. Re-run mode drops what is still resident; gradient-hook mode keeps the
        blocks backward fetched, which the next forward uses first."""
        if self.rerun_in_backward:
            for i in list(self.resident):
                self._release(i)
        self.last = None
