"""Block swapping: frozen block weights kept in pinned host memory and streamed to the GPU ahead of use."""

from __future__ import annotations

import contextlib
import dataclasses
import os

from typing import Callable, Iterable

import torch
from torch import nn

from .pinned import HostBuffer, held_bytes


def evenly_spaced(num_blocks: int, count: int) -> list[int]:
    """`count` of the indices 0..num_blocks-1, spread evenly."""
    if not 0 < count <= num_blocks:
        raise ValueError(f"can spread between 1 and {num_blocks} of {num_blocks} blocks (got {count})")
    return sorted({int((k + 0.5) * num_blocks / count) for k in range(count)})


def spread_blocks(num_blocks: int, count: int, resident_tail: int = 2) -> list[int]:
    """`count` block indices spread evenly over all blocks but the last `resident_tail` (fewer where
    `count` asks for more; the last block always stays).

    The last block stays resident: its backward starts the moment forward ends, with no time to fetch
    it. The blocks just before it need not be swapped either: where memory peaks, as backward starts,
    they are back on the GPU anyway (fetched, and kept for the next forward), so swapping them frees
    nothing there and costs copies when the host link is busiest.
    """
    if not 0 < count < num_blocks:
        raise ValueError(f"can spread between 1 and {num_blocks - 1} of {num_blocks} blocks (got {count})")
    if resident_tail < 1:
        raise ValueError(f"resident_tail must be >= 1 (the last block stays), got {resident_tail}")
    return evenly_spaced(max(num_blocks - resident_tail, count), count)


def check_swap_count(count: int, num_blocks: int) -> None:
    """Raise unless `count` blocks of `num_blocks` can be swapped: all but one (whole-block re-runs keep
    the first, gradient-hook fetching the last: its backward starts the moment forward ends, with no
    time to fetch it)."""
    limit = num_blocks - 1
    if limit < 1:
        raise ValueError(f"--blocks_to_swap: this {num_blocks}-block model has no block to swap; drop the flag")
    if not 0 < count <= limit:
        raise ValueError(f"--blocks_to_swap must be between 1 and {limit} for this {num_blocks}-block model "
                         f"(got {count})")


def streamed_bytes(block: nn.Module) -> int:
    """Bytes of `block` a swapper streams: its frozen matrices (vectors stay on the device)."""
    return _HostCopy.bytes_needed(block)


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


def check_host_memory(needed: int, flag: str, available: int | None = None, processes: int | None = None, *,
                      what: str = "weights", advice: str = "swap fewer blocks or free host memory") -> None:
    """Refuse when what `flag` keeps in host memory, for every training process on this host
    (`LOCAL_WORLD_SIZE`, set by accelerate/torchrun), would not fit in the memory the host has free."""
    available = available_host_memory() if available is None else available
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if processes is None else processes
    total = needed * processes
    if available is not None and total > 0.9 * available:
        each = f" ({processes} processes on this host, {needed / 2**30:.1f} GiB each)" if processes > 1 else ""
        raise ValueError(f"{flag} keeps {total / 2**30:.1f} GiB of {what} in host memory{each}, "
                         f"but only {available / 2**30:.1f} GiB is available; {advice}")


class _HostCopy:
    """The frozen matrices (parameters without grad, buffers; vectors stay) of one block, in one host buffer.

    `fetch()` copies the whole block into one device buffer (from a pinned `HostBuffer`, asynchronously on
    the given side stream when the device is CUDA) and points every tensor at its slice of the device copy;
    `drop()` points them at empty tensors again, which frees the device copy once the stream that
    used it is done. The module objects and parameter identities never change, so optimizers,
    hooks and tensors autograd saved for backward keep working.
    """

    _ALIGN = 64  # byte offset of every tensor in the buffer (kernels want aligned inputs)
    # Vectors (biases, norm weights, fp8 weight scales: about 1 MB of a full-size block) stay on the device.
    # Any tensor sharing the device copy keeps all of it alive, and compiled graphs may save such a vector
    # for backward as another tensor object on the same storage (measured for fp8 weight scales: every
    # swapped block then stayed on the GPU until its backward, +12 GiB at full size).

    @classmethod
    def _padded(cls, t: torch.Tensor) -> int:
        return -(-t.numel() * t.element_size() // cls._ALIGN) * cls._ALIGN

    @classmethod
    def bytes_needed(cls, block: nn.Module) -> int:
        return sum(cls._padded(t) for _, _, _, t in cls._frozen_tensors(block))

    @classmethod
    def _frozen_tensors(cls, block: nn.Module):
        """(qualified name, owning module, attribute name, tensor) of every parameter without grad and
        buffer that is not a vector (more than one dimension above 1)."""
        for path, module in block.named_modules():
            prefix = f"{path}." if path else ""
            named = [(n, p) for n, p in module._parameters.items() if p is not None and not p.requires_grad]
            named += [(n, b) for n, b in module._buffers.items() if b is not None]
            for name, t in named:
                if sum(size > 1 for size in t.shape) > 1:
                    yield prefix + name, module, name, t

    def __init__(self, block: nn.Module, device: torch.device, select=None):
        """`select(qualified_name) -> bool` picks which of the block's frozen tensors this copy holds
        (default: all)."""
        self.device = device
        self.entries: list[tuple[nn.Module, str, torch.dtype, torch.Size, int, int]] = []
        offset = 0
        tensors = []
        for qualified, module, name, t in self._frozen_tensors(block):
            if select is not None and not select(qualified):
                continue
            nbytes = t.numel() * t.element_size()
            self.entries.append((module, name, t.dtype, t.shape, offset, nbytes))
            tensors.append(t)
            offset += self._padded(t)
        self.nbytes = offset
        self.host = HostBuffer(offset, pin=device.type == "cuda")
        for (_, _, _, _, start, _), t in zip(self.entries, tensors):
            self.host.write(start, t.detach().contiguous())  # from the device too (a block prepared there)
        self.device_copy: torch.Tensor | None = None
        self.drop()

    @property
    def empty(self) -> bool:
        return not self.entries

    @staticmethod
    def _tensor(module: nn.Module, name: str) -> torch.Tensor:
        return module._parameters[name] if name in module._parameters else module._buffers[name]

    def fetch(self, stream=None, pool=None) -> None:
        """Point the block at a fresh device copy. On CUDA the buffer comes from the current stream's
        pool (the one activations use, so memory they free can hold blocks and the reverse), or from
        the private `pool` (a `torch.cuda.MemPool`) if given, and the copy runs on `stream`, which must
        already wait for the current stream."""
        if self.device.type == "cuda":
            with torch.cuda.use_mem_pool(pool, device=self.device) if pool is not None else contextlib.nullcontext():
                flat = torch.empty(self.nbytes, dtype=torch.uint8, device=self.device)
            with torch.cuda.stream(stream or torch.cuda.current_stream(self.device)):
                self.host.to_device(flat, non_blocking=True)
        else:
            flat = torch.empty(self.nbytes, dtype=torch.uint8)  # a separate storage, freed on drop like a device copy
            self.host.to_device(flat)
        for module, name, dtype, shape, start, nbytes in self.entries:
            self._tensor(module, name).data = flat[start:start + nbytes].view(dtype).view(shape)
        self.device_copy = flat

    def drop(self) -> None:
        """Point the block at empty tensors; the device copy returns to its stream's pool once the work
        queued on that stream so far is done (stream-ordered, like any freed activation)."""
        self.device_copy = None
        empty: dict[torch.dtype, torch.Tensor] = {}
        for module, name, dtype, _, _, _ in self.entries:
            if dtype not in empty:
                empty[dtype] = torch.empty(0, dtype=dtype, device=self.device)
            self._tensor(module, name).data = empty[dtype]


@dataclasses.dataclass(frozen=True)
class ForwardOnly:
    """Frozen tensors that a block's backward never reads while the block inputs they project carry no
    gradient: a frozen linear layer applied to such an input saves nothing of its own for backward
    (the LoRA beside it saves its input, an activation). A block that recomputes its forward inside
    its backward reads them again, so only blocks that recompute nothing may leave them out."""

    modules: tuple[str, ...]  # module paths inside a block: every frozen tensor under them
    inputs: tuple[tuple[str, int], ...]  # (keyword, position) of the block inputs those modules project

    def selects(self, qualified_name: str) -> bool:
        return any(qualified_name.startswith(m + ".") for m in self.modules)

    def inputs_need_grad(self, args: tuple, kwargs: dict) -> bool:
        for key, position in self.inputs:
            value = kwargs.get(key, args[position] if len(args) > position else None)
            if isinstance(value, torch.Tensor) and value.requires_grad:
                return True
        return False


# LTX-2's text cross-attentions: their keys and values project the text, which no trained parameter
# produces (about 80 MiB of a full-size block's 745 MiB).
LTX2_TEXT_KEYS_VALUES = ForwardOnly(modules=("attn2.to_k", "attn2.to_v", "audio_attn2.to_k", "audio_attn2.to_v"),
                                    inputs=(("encoder_hidden_states", 2), ("audio_encoder_hidden_states", 3)))

_MAIN, _FORWARD = "main", "forward"


class BlockSwapper:
    """Keep the frozen weight matrices of some transformer blocks in pinned CPU memory (their vectors stay:
    `_HostCopy`).

    A swapped block's tensors are copied to one GPU buffer on a side stream while earlier
    blocks compute and dropped again once the pass moved past it; trainable (LoRA) parameters always
    stay on the GPU. (On a CPU device the same logic runs with synchronous copies, for tests.)
    Two ways to learn that backward needs a block again:

    - `rerun_in_backward=True` (whole-block gradient checkpointing re-runs each block's forward
      right before its backward): the last `num_blocks` blocks are swapped and the forward pre-hook
      of the re-run fetches them, prefetching the block before it.
    - `rerun_in_backward=False` (compiled blocks recompute inside their own backward, or nothing is
      recomputed): `num_blocks` blocks spread over the model are swapped (`spread_blocks`). A block
      is dropped right after its forward, and a gradient hook on its output fetches it back before
      its backward runs (prefetching the next `backward_prefetch` swapped blocks down, only
      `start_prefetch` of them at the start of backward, before any activation has been freed); it then
      stays on the GPU into the next step's forward. So memory is freed where it peaks, between forward and backward, and each
      swapped block crosses the host link once per step, during backward, which is twice as long as
      forward. Compiled blocks save the parameters themselves for backward, whose storage the
      swapper replaces in place, so backward reads the fetched copy. (Eager linear layers save a
      transposed view instead, which stays correct but holds the weights until backward.)
      With `forward_only` (a `ForwardOnly`), the blocks in `forward_only_blocks` that are swapped
      (ones that recompute nothing) keep the tensors it names apart: backward does not fetch them,
      and the next forward fetches them ahead of use while the host link is otherwise idle, so
      backward, which the link paces at many swapped blocks, moves fewer bytes. In a step whose
      inputs to them carry gradient, backward fetches them too.
    """

    def __init__(self, transformer: nn.Module, num_blocks: int, device: torch.device | str = "cuda", *,
                 rerun_in_backward: bool = True, backward_prefetch: int = 2, start_prefetch: int = 1,
                 resident_tail: int = 2, forward_only: ForwardOnly | None = None,
                 forward_only_blocks: Iterable[int] = (), host_advice: tuple[str, str] | None = None,
                 prepare: Callable[[nn.Module], None] | None = None):
        """`host_advice`: (what streams, what to do) for the message when host memory is short (default:
        the `--blocks_to_swap` flag, swap fewer). `prepare(block)` runs on each swapped block, in order,
        right before its host copy is made (e.g. quantizing it on the device), so only one block at a time
        is ever in its prepared form outside host memory."""
        blocks = list(transformer.transformer_blocks)
        check_swap_count(num_blocks, len(blocks))
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # use_mem_pool wants an index
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.blocks = blocks
        self.rerun_in_backward = rerun_in_backward
        # Swapped blocks fetched ahead in backward: one copy (~15 ms for a full-size block) may take
        # longer than one block's backward, so two in flight keep the link busy without stalls.
        self.backward_prefetch = backward_prefetch
        # Memory peaks where backward starts: every activation is still alive, so each block fetched
        # ahead there adds to the peak (0.73 GiB at full size). Once the first block's backward has
        # been queued, its freed activations hold the further fetches.
        self.start_prefetch = start_prefetch
        self._backward_started = False
        swapped = (range(len(blocks) - num_blocks, len(blocks)) if rerun_in_backward
                   else spread_blocks(len(blocks), num_blocks, resident_tail))
        self.swapped = sorted(swapped)
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        what, advice = host_advice or (f"--blocks_to_swap {num_blocks}", "swap fewer blocks or free host memory")
        if prepare is None:  # prepared blocks may be smaller (quantized): each is checked as it is copied
            sizes = [_HostCopy.bytes_needed(blocks[i]) for i in self.swapped]
            check_host_memory(sum(map(held_bytes, sizes)), what, advice=advice)
        self.forward_only = None if rerun_in_backward else forward_only
        self.forward_only_blocks = set(forward_only_blocks)
        split = self.forward_only_blocks & set(self.swapped) if self.forward_only is not None else set()
        # per block: the tensors backward reads ("main") and, for `split` blocks, those it does not
        self.stores: dict[int, _HostCopy] = {}
        self.forward_stores: dict[int, _HostCopy] = {}
        for n, i in enumerate(self.swapped):
            if prepare is not None:
                prepare(blocks[i])
                remaining = (len(self.swapped) - n) * held_bytes(_HostCopy.bytes_needed(blocks[i]))
                check_host_memory(remaining, what, advice=advice)
            self.stores[i] = _HostCopy(blocks[i], self.device,
                                       (lambda q: not forward_only.selects(q)) if i in split else None)
            if i in split and not (c := _HostCopy(blocks[i], self.device, forward_only.selects)).empty:
                self.forward_stores[i] = c
        # The forward's fetches of those parts come and go between the forward's activations; from the
        # activations' pool, these same-sized buffers fragmented it (about 9 GiB more reserved at full
        # size). A private pool keeps reusing the same few segments instead.
        self.forward_pool = torch.cuda.MemPool() if self.cuda and self.forward_stores else None
        self.events: dict[tuple[str, int], torch.cuda.Event] = {}
        self.resident: set[int] = set()  # blocks whose main part is on the device
        self.forward_resident: set[int] = set()
        self._forward_only_in_backward = False  # this step's inputs to them carry gradient
        self.last: int | None = None
        self._handles = []
        for i, block in enumerate(blocks):
            if rerun_in_backward:
                self._handles.append(block.register_forward_pre_hook(self._make_rerun_hook(i)))
            else:
                self._handles.append(block.register_forward_pre_hook(self._make_forward_hook(i), with_kwargs=True))
                self._handles.append(block.register_forward_hook(self._make_backward_trigger(i)))

    def _table(self, part: str) -> tuple[dict[int, _HostCopy], set[int]]:
        return (self.stores, self.resident) if part == _MAIN else (self.forward_stores, self.forward_resident)

    def _prefetch(self, i: int, part: str = _MAIN) -> None:
        stores, resident = self._table(part)
        if i not in stores or i in resident:
            return
        if self.cuda:
            # The buffer may reuse memory that work queued so far on the compute stream still reads.
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            stores[i].fetch(self.stream, self.forward_pool if part == _FORWARD else None)
            event = torch.cuda.Event()
            event.record(self.stream)
            self.events[(part, i)] = event
        else:
            stores[i].fetch()
        resident.add(i)

    def _wait_for_copy(self, i: int, part: str = _MAIN) -> None:
        """Order the compute stream's next work after the pending copy of block i's `part`, if any."""
        event = self.events.pop((part, i), None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def _ensure(self, i: int, part: str = _MAIN) -> None:
        """Make block i's tensors (`part` of them) usable by the work queued next on the compute stream."""
        self._prefetch(i, part)
        self._wait_for_copy(i, part)

    def _release(self, i: int, part: str = _MAIN) -> None:
        stores, resident = self._table(part)
        if i not in stores or i not in resident:
            return
        self._wait_for_copy(i, part)  # a copy nobody waited for must land before the compute stream reuses its memory
        stores[i].drop()
        resident.discard(i)

    def _next_swapped(self, i: int, step: int, count: int = 1, part: str = _MAIN) -> list[int]:
        """The next `count` blocks after i in direction `step` whose `part` is swapped."""
        later = sorted((j for j in self._table(part)[0] if (j - i) * step > 0), key=lambda j: abs(j - i))
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
        def hook(module, args, kwargs):
            self._backward_started = False
            if self.forward_only is not None:
                self._forward_only_in_backward = self.forward_only.inputs_need_grad(args, kwargs)
            for part in (_MAIN, _FORWARD):
                self._ensure(i, part)
                for j in [j for j in self._table(part)[1] if j < i]:
                    self._release(j, part)
                for j in self._next_swapped(i, +1, part=part):
                    self._prefetch(j, part)
            return None

        return hook

    def _backward_parts(self) -> tuple[str, ...]:
        return (_MAIN, _FORWARD) if self._forward_only_in_backward else (_MAIN,)

    def _make_backward_trigger(self, i: int):
        def on_grad(grad):
            parts = self._backward_parts()
            for part in parts:
                self._ensure(i, part)
            ahead = self.backward_prefetch if self._backward_started else min(self.start_prefetch, self.backward_prefetch)
            self._backward_started = True
            for j in self._next_swapped(i, -1, ahead):  # blocks above stay for the next forward
                for part in parts:
                    self._prefetch(j, part)
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
            self._ensure(i, _FORWARD)
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.stores.clear()
        self.forward_stores.clear()
        self.resident.clear()
        self.forward_resident.clear()

    def reset(self) -> None:
        """Call between steps. Re-run mode drops what is still resident; gradient-hook mode keeps the
        blocks backward fetched, which the next forward uses first."""
        if self.rerun_in_backward:
            for i in list(self.resident):
                self._release(i)
        elif self.forward_stores:  # the forward hooks fetch each block's part ahead, but for the first
            self._prefetch(min(self.forward_stores), _FORWARD)
        self.last = None
