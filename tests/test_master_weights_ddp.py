"""fp32 master weights under DistributedDataParallel, on the device and offloaded to the host: the LoRA
tensors are views of one flat buffer, and DDP's initial broadcast and gradient all-reduce must work on
them as on ordinary parameters. Two real gloo processes on the CPU."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ltxv2_diffusers.speed import MasterWeights

from conftest import leave_spawned_process


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


def _batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(4, 6, generator=g).double(), torch.randn(4, 3, generator=g).double()


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model(seed=rank)  # rank 1 starts different: DDP must broadcast rank 0's weights into the views
    master = MasterWeights(model.parameters(), torch.float64)  # a wider compute dtype keeps the check exact
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = _batch()
    half = slice(rank * 2, rank * 2 + 2)
    nn.functional.mse_loss(ddp(x[half]), y[half]).backward()
    master.grads_to_master()
    views_kept = all(p.untyped_storage().data_ptr() == master.flat_model.data_ptr() for p in model.parameters())
    torch.save({"grad": master.flat.grad, "weights": master.flat_model.clone(), "views": views_kept},
               f"{out}/rank{rank}.pt")
    leave_spawned_process()


def _two_processes(worker, out, name: str) -> list[dict]:
    """Run `worker` in two gloo processes; what each saved as `{name}{rank}.pt`."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, port, str(out)), nprocs=2, join=True)
    return [torch.load(out / f"{name}{r}.pt") for r in range(2)]


def _one_process_master() -> MasterWeights:
    """The full batch's gradient in fp32 masters, in this process."""
    model = _model(seed=0)
    master = MasterWeights(model.parameters(), torch.float64)
    x, y = _batch()
    nn.functional.mse_loss(model(x), y).backward()
    master.grads_to_master()
    return master


def test_master_weights_under_ddp_match_one_process(tmp_path):
    ranks = _two_processes(_worker, tmp_path, "rank")
    master = _one_process_master()

    for r in ranks:
        assert r["views"]  # DDP kept the parameters as views of the flat buffer
        torch.testing.assert_close(r["weights"], master.flat_model)  # rank 0's weights everywhere
        torch.testing.assert_close(r["grad"], master.flat.grad)  # all-reduced = the full batch's gradient


def _offload_worker(rank: int, world: int, port: int, out: str) -> None:
    from ltxv2_diffusers.speed import HostMasterWeights, OffloadedAdamW

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model(seed=0)  # as the trainer seeds it: the same LoRA init on every rank
    master = HostMasterWeights(model.parameters(), [model[0], model[2]], torch.float64)
    optimizer = OffloadedAdamW(master, lr=0.1, blocks_per_chunk=1)
    ddp = nn.parallel.DistributedDataParallel(model)
    x, y = _batch()
    half = slice(rank * 2, rank * 2 + 2)
    nn.functional.mse_loss(ddp(x[half]), y[half]).backward()
    master.grads_to_master()
    optimizer.step()
    with torch.no_grad():
        ddp(x[half])  # the next forward: each block's pre-hook applies its slice of the update
    torch.save({"weights": master.flat_model.clone(), "pending": len(optimizer.pending)}, f"{out}/offload{rank}.pt")
    leave_spawned_process()


def test_offloaded_optimizer_under_ddp_matches_one_process(tmp_path):
    """Two gloo processes, each half the batch: the all-reduced gradients, stepped by the offloaded AdamW and
    applied by the blocks' forward pre-hooks under DDP, give the one-process AdamW weights on every rank."""
    ranks = _two_processes(_offload_worker, tmp_path, "offload")
    master = _one_process_master()
    optimizer = torch.optim.AdamW([master.flat], lr=0.1, fused=True)
    optimizer.step()
    master.master_to_model()
    for r in ranks:
        assert r["pending"] == 0
        torch.testing.assert_close(r["weights"], master.flat_model, rtol=1e-6, atol=1e-7)
