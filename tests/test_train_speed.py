"""The trainer's fast path (bf16 LoRA compute, fp32 master weights) forced onto the CPU: it trains,
accumulates in fp32, and a resume restores the masters so the result is bit-exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import baseline_argv, workspace
from ltxv2_diffusers.speed import setup as speed_module
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.trainer import Trainer

pytestmark = pytest.mark.slow


@pytest.fixture()
def fast_path_on_cpu(monkeypatch):
    """CUDA is what selects the fast path; choose it on the CPU (eager: no compile). `--fp8_base` passes
    through; the tiny model's layers are 32 wide, so quantization starts at 16."""
    def for_device(device, *, naive=False, fp8_base=False, **_):
        return speed_module.SpeedOptions(naive=naive, compile=False, compute_dtype=torch.bfloat16, fp8_base=fp8_base,
                                         quantize_min_features=16)

    monkeypatch.setattr(speed_module.SpeedOptions, "for_device", staticmethod(for_device))


def test_fast_path_trains_and_resumes_bit_exactly(tmp_path_factory, tmp_path, fast_path_on_cpu):
    ws = workspace(tmp_path_factory)
    full = Trainer(parse_args(baseline_argv(ws, tmp_path / "full", steps=4)))
    lora = full.run()
    assert full.speed.master is not None  # the fast path really ran
    assert all(p.dtype == torch.bfloat16 for p in full.speed.trainable_params)
    assert all(p.dtype == torch.float32 for p in full.speed.optimizer_params)
    state = tmp_path / "full" / "checkpoints" / "step-00000002"
    assert (state / "master_weights.safetensors").is_file()

    resumed = Trainer(parse_args(baseline_argv(ws, tmp_path / "resumed", steps=4, extra=["--resume", str(state)])))
    lora2 = resumed.run()
    a, b = load_file(str(lora)), load_file(str(lora2))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for m1, m2 in zip(full.speed.optimizer_params, resumed.speed.optimizer_params):
        assert torch.equal(m1, m2)  # the fp32 masters, not just their bf16 copies

    naive_args = parse_args(baseline_argv(ws, tmp_path / "naive", steps=4))
    naive_args.speed = "naive"  # a library caller's and the benchmarks' option, not a trainer flag
    naive = Trainer(naive_args)
    c = load_file(str(naive.run()))
    assert naive.speed.master is None
    assert any(not torch.equal(a[k].float(), c[k].float()) for k in a)  # bf16 compute is a different run
    for k in a:  # ... of the same training
        torch.testing.assert_close(a[k].float(), c[k].float(), rtol=0.1, atol=2e-3)


def test_fp8_base_trains_and_resumes_bit_exactly(tmp_path_factory, tmp_path, fast_path_on_cpu):
    ws = workspace(tmp_path_factory)
    full = Trainer(parse_args(baseline_argv(ws, tmp_path / "full", steps=4, extra=["--fp8_base"])))
    a = load_file(str(full.run()))
    assert full.speed.quantized_layers > 10 and "fp8 base weights and matmuls" in full.speed.summary()
    state = tmp_path / "full" / "checkpoints" / "step-00000002"
    resumed = Trainer(parse_args(baseline_argv(ws, tmp_path / "resumed", steps=4,
                                               extra=["--fp8_scaled", "--resume", str(state)])))
    b = load_file(str(resumed.run()))
    assert resumed.speed.quantized_layers == full.speed.quantized_layers  # the same base, quantized again
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bf16 = load_file(str(Trainer(parse_args(baseline_argv(ws, tmp_path / "bf16", steps=4))).run()))
    assert any(not torch.equal(a[k], bf16[k]) for k in a)  # really another computation
    for k in a:  # ... of the same training
        torch.testing.assert_close(a[k].float(), bf16[k].float(), rtol=0.1, atol=2e-3)
