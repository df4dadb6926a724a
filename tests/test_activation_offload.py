"""Whole-block checkpointing with the block inputs in host memory (`speed/activation_offload.py`): the
same loss and gradients as diffusers' own checkpointing, with streamed blocks too, each step's inputs kept
once per block and gone after backward."""

from __future__ import annotations

import pytest
import torch

from conftest import adapter_loss, leave_spawned_process, lora_grads, tiny_batch, tiny_lora_model
from ltxv2_diffusers.models.adapter import LTXAVModelAdapter, LTXV2ModelAdapter
from ltxv2_diffusers.speed.activation_offload import ActivationOffloader
from ltxv2_diffusers.speed.options import SpeedOptions
from ltxv2_diffusers.speed.setup import apply_speed_options


# The copies are synchronous clones through host buffers on a CPU; on a GPU the same test exercises the
# side stream, pinned buffers and events.
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(device):
    return {k: v.to(device) for k, v in tiny_batch().items()}


def _reference(device="cpu", num_layers=None):
    model = tiny_lora_model(torch.float32, num_layers=num_layers).to(device)
    model.enable_gradient_checkpointing()  # diffusers' torch.utils.checkpoint
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), _batch(device))
    loss.backward()
    return float(loss.detach()), lora_grads(model)


@pytest.mark.parametrize("device", DEVICES)
def test_offloaded_checkpointing_gives_the_same_loss_and_gradients(device):
    loss_ref, grads_ref = _reference(device)
    model = tiny_lora_model(torch.float32).to(device)
    offloader = ActivationOffloader(device)
    model.enable_gradient_checkpointing(offloader.checkpoint)
    calls = []
    original = offloader.offload

    def offload(flat, positions):  # what each block's forward hands to host memory
        saved = original(flat, positions)
        calls.append([s for s in saved if s is not None])
        return saved

    offloader.offload = offload
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), _batch(device))
    # one entry per block, each the block's video and audio hidden states (the shared inputs stay put)
    assert len(calls) == len(model.transformer_blocks) and len(offloader.pending) == len(calls)
    video_width = model.config.num_attention_heads * model.config.attention_head_dim
    audio_width = model.config.audio_num_attention_heads * model.config.audio_attention_head_dim
    assert all([s.shape[-1] for s in saved] == [video_width, audio_width] for saved in calls)
    loss.backward()
    assert not offloader.pending  # consumed by backward
    assert float(loss.detach()) == loss_ref
    grads = lora_grads(model)
    assert grads.keys() == grads_ref.keys() and len(grads) > 10
    for name, g in grads_ref.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_video_mode_and_streamed_blocks_through_the_speed_setup():
    """The lever as the speed setup applies it (eager fp32 on this CPU), with 2 of 3 blocks streamed (re-run
    mode), in video mode (audio inputs unused): the same gradients as diffusers' checkpointing."""
    batch = tiny_batch()
    ref = tiny_lora_model(torch.float32, num_layers=3)
    ref.enable_gradient_checkpointing()
    adapter_loss(LTXV2ModelAdapter.from_components(ref), batch).backward()
    grads_ref = lora_grads(ref)

    model = tiny_lora_model(torch.float32, num_layers=3)
    options = SpeedOptions(compile=False, recompute="checkpoint", compute_dtype=torch.float32,
                           blocks_to_swap=2, offload_activations=True, gradient_checkpointing=True)
    setup = apply_speed_options(model, options, device="cpu")
    assert setup.activations is not None and "block inputs in host memory" in setup.recompute
    for step in range(2):  # the second step reuses what the first left (nothing)
        adapter_loss(LTXV2ModelAdapter.from_components(model), batch).backward()
        grads = lora_grads(model)
        assert grads.keys() == grads_ref.keys()
        for name, g in grads_ref.items():
            torch.testing.assert_close(grads[name], g * (step + 1), rtol=1e-5, atol=1e-7, msg=name)
        assert not setup.activations.pending
        setup.reset()


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One of two gloo processes: the offloaded re-runs under DDP (which holds the LoRA only), same batch."""
    import os

    import torch.distributed as dist

    from ltxv2_diffusers.training.ddp import leave_frozen_to_each_process

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = tiny_lora_model(torch.float32)
    offloader = ActivationOffloader("cpu")
    model.enable_gradient_checkpointing(offloader.checkpoint)
    adapter = LTXAVModelAdapter.from_components(model)
    leave_frozen_to_each_process(adapter)
    ddp = torch.nn.parallel.DistributedDataParallel(adapter)
    adapter_loss(ddp, tiny_batch()).backward()  # DDP's hooks fire inside the re-runs' own backward
    torch.save(lora_grads(model), f"{out}/rank{rank}.pt")
    leave_spawned_process()


def test_offloaded_re_runs_under_ddp_give_the_one_process_gradients(tmp_path):
    import socket

    import torch.multiprocessing as mp

    _, grads_ref = _reference()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        grads = torch.load(tmp_path / f"rank{rank}.pt")
        assert grads.keys() == grads_ref.keys()
        for name, g in grads_ref.items():  # the same batch on both: the all-reduced mean is the one-process grad
            torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)
