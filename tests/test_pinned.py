"""Host buffers in power-of-two pieces (`speed/pinned.py`): what they hold, and that bytes written across
piece boundaries come back exactly, through the block swapper's host copies too."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ltxv2_diffusers.speed.block_swap import _HostCopy
from ltxv2_diffusers.speed.pinned import GRANULE, HostBuffer, allocator_bytes, as_bytes, held_bytes, piece_sizes

MiB = 1 << 20


@pytest.mark.parametrize("nbytes", [1, 3000, GRANULE, GRANULE + 1, 5 * MiB + 7, 745 * MiB + 12345, 3 << 30])
def test_pieces_are_powers_of_two_within_a_granule_of_the_size(nbytes):
    sizes = piece_sizes(nbytes)
    powers, rest = [s for s in sizes if s >= GRANULE], [s for s in sizes if s < GRANULE]
    assert sizes == powers + rest and len(rest) <= 1 and sum(sizes) == nbytes
    assert all(s & (s - 1) == 0 for s in powers) and powers == sorted(set(powers), reverse=True)  # few pieces
    # the allocator rounds only the small last piece up: less than a granule over, never more than one tensor
    assert nbytes <= held_bytes(nbytes) < nbytes + GRANULE and held_bytes(nbytes) <= allocator_bytes(nbytes)
    assert allocator_bytes(nbytes) & (allocator_bytes(nbytes) - 1) == 0
    assert piece_sizes(0) == [] and held_bytes(0) == 0 == allocator_bytes(0)

def test_a_full_size_block_takes_its_size_not_the_next_power_of_two():
    block = 771_900_000  # bytes of one full-size LTX-2 block's frozen matrices in bf16 (0.72 GiB)
    assert allocator_bytes(block) == 1 << 30
    assert held_bytes(block) - block < GRANULE
    assert len(piece_sizes(block)) <= 10


def test_bytes_written_across_pieces_come_back_exactly():
    nbytes = 5 * MiB + 3 * 1024  # pieces of 4 MiB, 1 MiB, 3 KiB
    buffer = HostBuffer(nbytes, pin=False)
    assert [p.numel() for p in buffer.pieces] == [4 * MiB, MiB, 3 * 1024]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3 * MiB // 4, generator=g)  # 3 MiB of fp32 at offset 1 MiB + 64: crosses into the second piece
    b = torch.randint(0, 255, (1000, 5), dtype=torch.uint8, generator=g)
    buffer.write(MiB + 64, a)
    buffer.write(5 * MiB - 3000, b)  # straddles the last boundary
    flat = torch.zeros(nbytes, dtype=torch.uint8)
    buffer.to_device(flat)
    assert torch.equal(flat[MiB + 64:MiB + 64 + a.numel() * 4].view(torch.float32), a)
    assert torch.equal(flat[5 * MiB - 3000:5 * MiB - 3000 + b.numel()], b.reshape(-1))
    back = HostBuffer(nbytes, pin=False)
    back.from_device(flat)
    again = torch.empty(nbytes, dtype=torch.uint8)
    back.to_device(again)
    assert torch.equal(again, flat)
    with pytest.raises(ValueError, match="do not fit"):
        buffer.write(nbytes - 10, torch.zeros(11, dtype=torch.uint8))
    with pytest.raises(ValueError, match="contiguous"):
        as_bytes(torch.zeros(4, 4).t())


def test_a_block_copy_spanning_several_pieces_fetches_its_weights_exactly():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(1024, 1100), nn.Linear(1100, 1024), nn.Linear(1024, 700)).to(torch.bfloat16)
    block.requires_grad_(False)
    originals = {n: p.detach().clone() for n, p in block.named_parameters()}
    needed = _HostCopy.bytes_needed(block)
    copy = _HostCopy(block, torch.device("cpu"))
    assert len(copy.host.pieces) >= 2 and copy.nbytes == needed
    assert all(p.numel() == 0 for n, p in block.named_parameters() if p.dim() > 1)  # dropped until fetched
    copy.fetch()
    for name, p in block.named_parameters():
        assert torch.equal(p, originals[name]), name
    x = torch.randn(2, 1024, dtype=torch.bfloat16)
    assert block(x).shape == (2, 700)
    copy.drop()
    assert copy.device_copy is None and block[0].weight.numel() == 0 and block[0].bias.numel() == 1100


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory and side-stream copies need CUDA")
def test_pinned_pieces_copy_to_and_from_the_gpu_on_a_side_stream():
    nbytes = 9 * MiB + 12345
    data = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device="cuda")
    buffer = HostBuffer(nbytes, pin=True)
    assert all(p.is_pinned() for p in buffer.pieces)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        buffer.from_device(data, non_blocking=True)
        back = torch.empty_like(data)
        buffer.to_device(back, non_blocking=True)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(back, data)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_cached_pinned_memory_goes_back_to_the_os_on_the_gpu_host():
    from ltxv2_diffusers.speed.pinned import release_cached_pinned_memory

    def reserved():
        return torch.cuda.host_memory_stats()["allocated_bytes.current"]  # blocks in use and cached

    buffer = HostBuffer(64 * MiB + 5, pin=True)
    held = reserved()
    assert held >= 64 * MiB
    del buffer
    assert reserved() == held  # freed, but kept cached for reuse
    release_cached_pinned_memory()
    assert reserved() <= held - 64 * MiB
