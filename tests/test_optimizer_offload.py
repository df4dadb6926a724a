"""`--offload_optimizer`: AdamW with its fp32 masters and moments in host memory, applied block by block
during the next forward, trains exactly like fused AdamW over device masters, and its state moves
between the two. The logic runs on a CPU device too (synchronous copies); on a GPU the same tests
exercise the side-stream copies."""

import pytest
import torch

from ltxv2_diffusers import speed as acceleration
from ltxv2_diffusers.models.adapter import LTXAVModelAdapter
from ltxv2_diffusers.training.args import ArgsError, parse_args, validate_args
from ltxv2_diffusers.speed.setup import SpeedOptions, apply_speed_options

from conftest import adapter_loss, tiny_batch, tiny_lora_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ADAMW = dict(lr=3e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)


def _setup(device, offload, checkpointing=False, int8=False):
    model = tiny_lora_model(torch.float32, num_layers=3)
    if checkpointing:  # diffusers re-runs each block's forward in backward: its pre-hooks fire again
        model.enable_gradient_checkpointing()
    setup = apply_speed_options(model, SpeedOptions(naive=False, compile=False, recompute="checkpoint",
                                                    int8_base=int8, offload_optimizer=offload), device=device)
    # two chunks of the three blocks: the hooks of both, the prefetch and the copies back all run
    optimizer = setup.make_optimizer(torch.optim.AdamW, **ADAMW,
                                     **({"blocks_per_chunk": 2} if offload else {"fused": True}))
    return model, setup, optimizer


def _on(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def _step(model, setup, optimizer, step, device, max_norm=None, micro_batches=2):
    """One optimizer step over `micro_batches` forwards; returns the losses and the gradient norm."""
    adapter = LTXAVModelAdapter.from_components(model)
    losses = []
    for micro in range(micro_batches):
        loss = adapter_loss(adapter, _on(tiny_batch(10 * step + micro), device))
        (loss / micro_batches).backward()
        setup.accumulate_grads()
        losses.append(float(loss.detach()))
    norm = float(setup.clip_grad_norm(max_norm)) if max_norm else None
    optimizer.step()
    setup.after_optimizer_step()
    optimizer.zero_grad(set_to_none=True)
    return losses, norm


@pytest.mark.parametrize("levers", ["plain", "checkpointing", "checkpointing+int8"])  # the last: --low_memory's
@pytest.mark.parametrize("device", DEVICES)
def test_offloaded_adamw_trains_like_fused_adamw(device, levers):
    kw = dict(checkpointing="checkpointing" in levers, int8="int8" in levers)
    ref_model, ref, ref_opt = _setup(device, offload=False, **kw)
    model, off, opt = _setup(device, offload=True, **kw)
    assert off.offloaded and off.master.flat.device.type == "cpu" and len(off.master.runs) >= 3
    assert isinstance(opt, acceleration.OffloadedAdamW)
    assert [opt.first_block[c] for c in opt.order] == [0, 2] and len(opt._handles) == 2
    for step in range(3):
        ref_losses, ref_norm = _step(ref_model, ref, ref_opt, step, device, max_norm=0.05)
        losses, norm = _step(model, off, opt, step, device, max_norm=0.05)
        # the previous step's update was applied during this step's forward: same losses
        assert losses == pytest.approx(ref_losses, rel=1e-6, abs=1e-7)
        assert norm == pytest.approx(ref_norm, rel=1e-5) and norm > 0.05  # clipping was active
    # Until the next forward (or a flush) the model still holds the previous weights.
    assert not torch.equal(off.master.flat_model, ref.master.flat_model)
    opt.flush()  # the update, and the host copies of the state (and step count) current
    torch.testing.assert_close(off.master.flat.detach(), ref.master.flat.detach().cpu(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(off.master.flat_model.float(), ref.master.flat_model.float(), rtol=1e-2, atol=1e-6)
    ref_state, state = ref_opt.state[ref.master.flat], opt.state[off.master.flat]
    assert float(state["step"]) == float(ref_state["step"]) == 3
    for key in ("exp_avg", "exp_avg_sq"):
        assert state[key].device.type == "cpu" and state[key].is_pinned() == (device == "cuda")
        torch.testing.assert_close(state[key], ref_state[key].cpu(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_offloaded_update_is_exact_without_clipping(device):
    """Same fused kernel on slices of the flat master: bit for bit what AdamW does over the whole."""
    ref_model, ref, ref_opt = _setup(device, offload=False)
    model, off, opt = _setup(device, offload=True)
    for step in range(2):
        _step(ref_model, ref, ref_opt, step, device, micro_batches=1)
        _step(model, off, opt, step, device, micro_batches=1)
    LTXAVModelAdapter.from_components(model)  # nothing pending is applied without a forward or flush
    opt.flush()
    assert torch.equal(off.master.flat.detach(), ref.master.flat.detach().cpu())
    assert torch.equal(off.master.flat_model, ref.master.flat_model)


@pytest.mark.parametrize("device", DEVICES)
def test_a_step_skipped_on_the_device_leaves_everything_as_it_was(device):
    """`found_inf` = 1, as the trainer passes for a non-finite step without waiting for the verdict:
    weights, moments and step count stay as they were, as with fused AdamW, and the run goes on
    exactly as one in which that step never happened."""
    ref_model, ref, ref_opt = _setup(device, offload=False)
    model, off, opt = _setup(device, offload=True)
    plain_model, plain, plain_opt = _setup(device, offload=True)
    for step, skip in enumerate([False, True, False]):
        flag = torch.tensor(float(skip), device=device)
        for setup in (ref, off):
            assert setup.skips_on_device
            setup.skip_if(flag)
        _step(ref_model, ref, ref_opt, step, device, micro_batches=1)
        _step(model, off, opt, step, device, micro_batches=1)
        if not skip:
            _step(plain_model, plain, plain_opt, step, device, micro_batches=1)
    opt.flush()
    plain_opt.flush()
    state, ref_state, plain_state = (o.state[s.master.flat] for o, s in ((opt, off), (ref_opt, ref), (plain_opt, plain)))
    assert float(state["step"]) == float(ref_state["step"]) == float(plain_state["step"]) == 2
    assert torch.equal(off.master.flat.detach(), ref.master.flat.detach().cpu())
    assert torch.equal(off.master.flat.detach(), plain.master.flat.detach())
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key], plain_state[key])
        torch.testing.assert_close(state[key], ref_state[key].cpu(), rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_state_moves_between_offloaded_and_device_adamw(device):
    """A checkpoint of either optimizer resumes in the other (same state layout)."""
    src_model, src, src_opt = _setup(device, offload=False)
    for step in range(2):
        _step(src_model, src, src_opt, step, device, micro_batches=1)
    model, off, opt = _setup(device, offload=True)
    off.master.load_state_dict(src.master.state_dict())
    opt.load_state_dict(src_opt.state_dict())
    assert all(opt.state[off.master.flat][k].is_pinned() == (device == "cuda") for k in ("exp_avg", "exp_avg_sq"))
    back_model, back, back_opt = _setup(device, offload=False)
    _step(src_model, src, src_opt, 2, device, micro_batches=1)
    _step(model, off, opt, 2, device, micro_batches=1)
    back.master.load_state_dict(off.master.state_dict())  # state_dict flushes the pending update first
    back_opt.load_state_dict(opt.state_dict())
    torch.testing.assert_close(back.master.flat, src.master.flat, rtol=0, atol=0)
    torch.testing.assert_close(back_opt.state[back.master.flat]["exp_avg_sq"], src_opt.state[src.master.flat]["exp_avg_sq"])
    assert float(back_opt.state[back.master.flat]["step"]) == 3


def test_a_skipped_step_drops_its_gradients():
    model, off, opt = _setup("cpu", offload=True)
    before = off.master.flat.detach().clone()
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), tiny_batch())
    loss.backward()
    off.accumulate_grads()
    assert any(g is not None for g in off.master.grads)
    opt.zero_grad(set_to_none=True)  # the trainer's path for a non-finite step
    opt.step()
    opt.flush()
    assert torch.equal(off.master.flat.detach(), before) and not opt.state[off.master.flat]


def test_block_runs_group_parameters_by_block():
    blocks = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    outside = torch.nn.Parameter(torch.zeros(1))
    params = [outside, *blocks[0].parameters(), *blocks[1].parameters(), outside]
    assert acceleration.block_runs(blocks, params) == [(None, 0, 1), (0, 1, 3), (1, 3, 5), (None, 5, 6)]


def test_offload_optimizer_flag_errors(tmp_path):
    assert any("--offload_optimizer need a CUDA device" in p and "this run is on cpu" in p
               for p in SpeedOptions.for_device("cpu", offload_optimizer=True).problems())
    with pytest.raises(ValueError, match="--offload_optimizer .*needs bf16 compute"):
        apply_speed_options(tiny_lora_model(torch.float32, num_layers=2),
                            SpeedOptions(naive=True, compile=False, offload_optimizer=True), device="cpu")
    (tmp_path / "data.toml").write_text("[[datasets]]\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    base = ["--dataset_config", str(tmp_path / "data.toml"), "--ltxv2_model", str(tmp_path / "model.safetensors"),
            "--ltxv2_timestep_format", "sd3_0_1", "--output_dir", str(tmp_path / "out"), "--offload_optimizer"]
    for extra, message in (("naive", "drop --speed naive"),  # `speed` is the benchmarks' and library callers'
                           (["--optimizer_type", "AdamW8bit"], "implements AdamW"),
                           ([], "need a CUDA device") if not torch.cuda.is_available() else ([], None)):
        args = parse_args(base + ([] if extra == "naive" else extra), validate=False)
        if extra == "naive":
            args.speed = "naive"
        if message is None:
            validate_args(args)
            continue
        with pytest.raises(ArgsError, match=message):
            validate_args(args)
    _, setup, _ = _setup("cpu", offload=True)
    with pytest.raises(ValueError, match="implements AdamW, not SGD"):
        setup.make_optimizer(torch.optim.SGD, lr=1.0)


def test_offload_refuses_more_than_the_host_memory(monkeypatch):
    from ltxv2_diffusers.speed import block_swap

    monkeypatch.setattr(block_swap, "available_host_memory", lambda: 2**10)  # 1 KiB free
    with pytest.raises(ValueError, match=r"--offload_optimizer keeps .* of optimizer state in host memory, but only "
                                         r"0.0 GiB is available; drop the flag"):
        _setup("cpu", offload=True)
