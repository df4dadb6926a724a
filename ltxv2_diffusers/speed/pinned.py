"""Host buffers for the GPU's side copies, pinned without the pinned allocator's power-of-two waste.

PyTorch's pinned-memory allocator rounds every allocation up to the next power of two, so that freed
blocks can be reused by size (`CachingHostAllocator.h`; no setting turns it off in PyTorch 2.11). One
full-size LTX-2 block's frozen weights (0.72 GiB) in one pinned tensor take 1 GiB; 38 streamed blocks
take 38 GiB of host memory for 27 GiB of weights. A `HostBuffer` holds the same bytes as a few pinned
pieces whose sizes are powers of two already (the binary digits of the size, rounded up to `GRANULE`),
so the allocator adds nothing to them; only the last piece, below `GRANULE`, is rounded up. Copies to and from the GPU go piece
by piece (a handful of transfers of tens of megabytes or more each, on the same stream).
"""

from __future__ import annotations

import torch

GRANULE = 1 << 20  # the smallest piece: below a megabyte the extra transfers would cost more than they save


def piece_sizes(nbytes: int) -> list[int]:
    """Sizes of the pieces holding `nbytes`, largest first: its binary digits of `GRANULE` and above, each a
    power of two, then what is left below `GRANULE` (if anything) as one last piece."""
    nbytes = max(int(nbytes), 0)
    rest = nbytes % GRANULE
    sizes = [1 << bit for bit in range(nbytes.bit_length() - 1, -1, -1) if bit >= GRANULE.bit_length() - 1
             and nbytes >> bit & 1]
    return sizes + [rest] if rest else sizes


def allocator_bytes(nbytes: int) -> int:
    """Host memory one ordinary pinned tensor of `nbytes` holds: the pinned allocator's power of two."""
    return 1 << (int(nbytes) - 1).bit_length() if nbytes > 0 else 0


def held_bytes(nbytes: int) -> int:
    """Host memory a `HostBuffer` of `nbytes` holds once pinned (less than `GRANULE` over `nbytes`)."""
    return sum(map(allocator_bytes, piece_sizes(nbytes)))


class HostBuffer:
    """`nbytes` of host memory, pinned when `pin`, as power-of-two pieces (see the module docstring).

    Addressed as one flat byte range: `write` fills a span of it from any CPU tensor, `to_device` /
    `from_device` copy all of it into / out of a flat uint8 device tensor (asynchronously on the current
    stream when pinned and `non_blocking`)."""

    def __init__(self, nbytes: int, pin: bool):
        self.nbytes = int(nbytes)
        self.pieces: list[torch.Tensor] = []
        self.starts: list[int] = []
        start = 0
        for size in piece_sizes(self.nbytes):
            self.pieces.append(torch.empty(size, dtype=torch.uint8, pin_memory=pin))
            self.starts.append(start)
            start += size

    def _spans(self, begin: int, end: int):
        """(piece, offset in the piece, offset in the range, length) covering bytes begin..end."""
        for piece, start in zip(self.pieces, self.starts):
            lo, hi = max(begin, start), min(end, start + piece.numel())
            if lo < hi:
                yield piece, lo - start, lo - begin, hi - lo

    def write(self, offset: int, data: torch.Tensor) -> None:
        """Copy `data` (any contiguous tensor, on the CPU or a GPU, as raw bytes) into the buffer at byte
        `offset`."""
        raw = as_bytes(data)
        if offset < 0 or offset + raw.numel() > self.nbytes:
            raise ValueError(f"{raw.numel()} bytes at offset {offset} do not fit a {self.nbytes}-byte host buffer")
        for piece, at, src, length in self._spans(offset, offset + raw.numel()):
            piece[at:at + length].copy_(raw[src:src + length])

    def to_device(self, flat: torch.Tensor, non_blocking: bool = False) -> None:
        """Copy the buffer's bytes into `flat` (a uint8 tensor of `nbytes` elements)."""
        for piece, at, dst, length in self._spans(0, self.nbytes):
            flat[dst:dst + length].copy_(piece[at:at + length], non_blocking=non_blocking)

    def from_device(self, flat: torch.Tensor, non_blocking: bool = False) -> None:
        """Copy `flat` (a uint8 tensor of `nbytes` elements) into the buffer."""
        for piece, at, src, length in self._spans(0, self.nbytes):
            piece[at:at + length].copy_(flat[src:src + length], non_blocking=non_blocking)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's storage as a flat uint8 view (no copy)."""
    if not t.is_contiguous():
        raise ValueError("a host buffer copies contiguous tensors only")
    return t.detach().reshape(-1).view(torch.uint8)


def release_cached_pinned_memory() -> None:
    """Give back to the OS the pinned memory PyTorch keeps cached for reuse once its tensors are freed (e.g.
    a streamed text encoder's layers, before training pins its own): the host memory the planner counted on."""
    if not torch.cuda.is_available():
        return
    empty = getattr(torch.accelerator, "empty_host_cache", None) or getattr(torch._C, "_host_emptyCache", None)
    if empty is not None:
        empty()
