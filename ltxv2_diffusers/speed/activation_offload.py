"""Whole-block gradient checkpointing whose saved block inputs wait in pinned host memory.

With whole-block re-runs each block keeps only its input for backward: the hidden states that enter it
(video and audio), one per block. That is the re-run plans' largest activation cost on long clips (48 ×
214 MiB = 10.0 GiB at 1280×720×241). `ActivationOffloader.checkpoint` is a drop-in for diffusers'
`gradient_checkpointing_func`: the forward runs the block without keeping anything, copies its hidden-state
inputs to pinned host memory on a side stream, and backward copies them back (the block below's already on
its way while this one re-runs) before re-running the block with gradients. The other inputs (text
context, timestep embeddings, rotary tables) are the same tensors for every block and stay where they are.

On a CPU device the copies are synchronous, through the same (unpinned) host buffers (tests). Results
are bit-identical to diffusers' own checkpointing: the same block runs on the same inputs.
"""

from __future__ import annotations

import dataclasses

import torch
from torch.utils import _pytree as pytree

from .pinned import HostBuffer, as_bytes

# diffusers' LTX-2 transformer passes (block, hidden_states, audio_hidden_states, shared inputs...)
OFFLOADED_ARGS = 2


@dataclasses.dataclass
class _Saved:
    """One offloaded block input: its host copy (bytes) and, once fetched back, the device copy."""

    host: HostBuffer
    shape: torch.Size
    dtype: torch.dtype
    device_copy: torch.Tensor | None = None
    ready: torch.cuda.Event | None = None


class ActivationOffloader:
    """Keeps the hidden-state inputs of checkpointed blocks in host memory between forward and backward.

    Use `checkpoint` as the transformer's gradient checkpointing function; `reset()` between steps
    (the speed setup does) drops what an interrupted step left."""

    def __init__(self, device: torch.device | str = "cuda"):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.pending: list[list[_Saved | None]] = []  # per block run in this step's forward, in order
        self._anchor = torch.empty(0, requires_grad=True)

    def checkpoint(self, block, *args):
        """diffusers' `gradient_checkpointing_func(block, *args)`."""
        flat, spec = pytree.tree_flatten(args)
        positions, start = set(), 0
        for k, arg in enumerate(args):
            if k < OFFLOADED_ARGS and isinstance(arg, torch.Tensor):
                positions.add(start)
            start += len(pytree.tree_leaves(arg))
        # With the LoRA inside the block and nothing trainable before it, no input may need a gradient:
        # one empty leaf that does makes autograd record the block (it never receives a gradient).
        return _OffloadedBlock.apply(self, block, (spec, frozenset(positions)), self._anchor, *flat)

    def reset(self) -> None:
        if self.cuda and self.pending:  # an interrupted step's copies must not outlive their buffers
            self.stream.synchronize()
        self.pending.clear()

    # ------------------------------------------------------------------ copies
    def offload(self, flat: list, positions: frozenset) -> list[_Saved | None]:
        """Host copies of the tensors at `positions` (None elsewhere); on CUDA queued behind the work that
        produced them, on the side stream."""
        saved: list[_Saved | None] = []
        for position, t in enumerate(flat):
            if position not in positions or t.device.type != self.device.type:
                saved.append(None)
                continue
            t = t.detach().contiguous()
            host = HostBuffer(t.numel() * t.element_size(), pin=self.cuda)
            if not self.cuda:
                host.from_device(as_bytes(t))
                saved.append(_Saved(host, t.shape, t.dtype))
                continue
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                host.from_device(as_bytes(t), non_blocking=True)
            t.record_stream(self.stream)  # its memory is not reused before the copy has read it
            saved.append(_Saved(host, t.shape, t.dtype))
        self.pending.append(saved)
        return saved

    def _fetch(self, saved: list[_Saved | None]) -> None:
        """Start copying `saved` back to the device (side stream), unless already under way."""
        for s in saved:
            if s is None or s.device_copy is not None:
                continue
            if not self.cuda:
                s.device_copy = torch.empty(s.shape, dtype=s.dtype)
                s.host.to_device(as_bytes(s.device_copy))
                continue
            # Allocated in the compute stream's order, so the memory goes back to that stream's pool as soon
            # as the block's backward is queued, and is reused in order. Allocated on the side stream (and
            # handed over with record_stream) it stayed allocated until the GPU caught up with the host:
            # with the host a few blocks ahead, five blocks' inputs were held at the backward's peak, not two.
            current = torch.cuda.current_stream(self.device)
            s.device_copy = torch.empty(s.shape, dtype=s.dtype, device=self.device)
            self.stream.wait_stream(current)  # the memory's earlier users on the compute stream are done
            with torch.cuda.stream(self.stream):
                s.host.to_device(as_bytes(s.device_copy), non_blocking=True)
                s.ready = torch.cuda.Event()
                s.ready.record(self.stream)

    def restore(self, saved: list[_Saved | None]) -> list[torch.Tensor | None]:
        """The device copies of `saved`, usable by the compute stream's next work; starts fetching the
        inputs of the block below (backward runs the blocks in reverse)."""
        self._fetch(saved)
        index = next((i for i, s in enumerate(self.pending) if s is saved), None)
        if index is not None:
            self.pending.pop(index)
            if index > 0:
                self._fetch(self.pending[index - 1])
        out = []
        for s in saved:
            if s is None:
                out.append(None)
                continue
            if s.ready is not None:
                torch.cuda.current_stream(self.device).wait_event(s.ready)
            out.append(s.device_copy)
        return out


class _OffloadedBlock(torch.autograd.Function):
    """Run `block` without keeping activations; in backward, re-run it on the restored inputs."""

    @staticmethod
    def forward(ctx, offloader: ActivationOffloader, block, layout, anchor, *flat):
        spec, positions = layout
        ctx.offloader, ctx.block, ctx.spec = offloader, block, spec
        # An output the loss does not use (audio in video mode) gets None, not zeros: backpropagating
        # zeros would give its LoRA weights zero gradients where diffusers' checkpointing gives none.
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            out = block(*pytree.tree_unflatten(list(flat), spec))
        saved = offloader.offload(list(flat), positions)
        ctx.saved = saved
        kept = [t if s is None and isinstance(t, torch.Tensor) else None for t, s in zip(flat, saved)]
        ctx.kept_positions = [i for i, t in enumerate(kept) if t is not None]
        ctx.save_for_backward(*(kept[i] for i in ctx.kept_positions))
        ctx.others = [None if isinstance(t, torch.Tensor) else t for t in flat]
        ctx.needs = list(ctx.needs_input_grad[4:])
        return out

    @staticmethod
    def backward(ctx, *grads):
        restored = ctx.offloader.restore(ctx.saved)
        flat = list(ctx.others)
        for position, t in zip(ctx.kept_positions, ctx.saved_tensors):
            flat[position] = t
        for position, t in enumerate(restored):
            if t is not None:
                flat[position] = t
        inputs = [t.detach().requires_grad_(need) if isinstance(t, torch.Tensor) else t
                  for t, need in zip(flat, ctx.needs)]
        with torch.enable_grad():
            out = ctx.block(*pytree.tree_unflatten(inputs, ctx.spec))
        outputs = out if isinstance(out, (tuple, list)) else (out,)
        pairs = [(o, g) for o, g in zip(outputs, grads)
                 if isinstance(o, torch.Tensor) and o.requires_grad and g is not None]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        ctx.saved = None
        return (None, None, None, None, *(t.grad if isinstance(t, torch.Tensor) and need else None
                                    for t, need in zip(inputs, ctx.needs)))
