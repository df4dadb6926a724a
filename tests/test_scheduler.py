"""LTXV2FlowMatchScheduler: LTX-2 inference schedule (what LTX2Pipeline gets) and training sigmas."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline

from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler, add_noise, token_shift, velocity
from ltxv2_diffusers.timesteps import TimestepFormat

LTX2_INFERENCE = dict(
    use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05, base_image_seq_len=1024,
    max_image_seq_len=4096, shift_terminal=0.1,
)


def test_inference_config_is_ltx2s_and_a_flow_match_euler_scheduler(tmp_path):
    s = LTXV2FlowMatchScheduler()
    assert isinstance(s, FlowMatchEulerDiscreteScheduler)  # LTX2Pipeline's `scheduler` type
    assert {k: s.config[k] for k in LTX2_INFERENCE} == LTX2_INFERENCE
    s.save_pretrained(tmp_path)
    again = LTXV2FlowMatchScheduler.from_pretrained(tmp_path)
    public = lambda cfg: {k: v for k, v in cfg.items() if not k.startswith("_")}  # noqa: E731
    assert public(again.config) == public(s.config)
    # a stock scheduler reads our saved config (extra training keys are ignored)
    stock = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path)
    assert {k: stock.config[k] for k in LTX2_INFERENCE} == LTX2_INFERENCE
    # and ours reads a stock scheduler config (e.g. a diffusers-format LTX-2 repo's scheduler/)
    ours = LTXV2FlowMatchScheduler.from_config(FlowMatchEulerDiscreteScheduler(**LTX2_INFERENCE).config)
    assert {k: ours.config[k] for k in LTX2_INFERENCE} == LTX2_INFERENCE
    assert ours.config.training_sampling == "shifted_logit_normal"


@pytest.mark.parametrize("tokens", [256, 1024, 6144])
def test_inference_sigmas_equal_stock_scheduler_with_ltx2_config(tokens):
    ours, stock = LTXV2FlowMatchScheduler(), FlowMatchEulerDiscreteScheduler(**LTX2_INFERENCE)
    import numpy as np

    from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift

    mu = calculate_shift(tokens, 1024, 4096, 0.95, 2.05)  # what LTX2Pipeline computes
    assert ours.mu_for_tokens(tokens) == pytest.approx(mu, abs=1e-12)
    sigmas = np.linspace(1.0, 1 / 8, 8)
    ours.set_timesteps(sigmas=sigmas, mu=mu)
    stock.set_timesteps(sigmas=sigmas, mu=mu)
    assert torch.equal(ours.sigmas, stock.sigmas) and torch.equal(ours.timesteps, stock.timesteps)
    assert ours.sigmas[-2].item() == pytest.approx(0.1, abs=1e-6)  # stretched to terminal 0.1


def test_stock_ltx2_pipeline_registers_it():
    s = LTXV2FlowMatchScheduler()
    pipe = LTX2Pipeline(scheduler=s, vae=None, audio_vae=None, text_encoder=None, tokenizer=None,
                        connectors=None, transformer=None, vocoder=None)
    assert pipe.scheduler is s
    assert pipe.components["scheduler"].config.shift_terminal == 0.1


def test_token_shift_line():
    assert token_shift(1024, 0.95, 2.05, 1024, 4096) == pytest.approx(0.95)
    assert token_shift(4096, 0.95, 2.05, 1024, 4096) == pytest.approx(2.05)
    assert token_shift(2560, 0.95, 2.05, 1024, 4096) == pytest.approx(1.5)
    assert token_shift(8192, 0.95, 2.05, 1024, 4096) > 2.05  # extrapolated like the official trainer


def _stretched_quantile(q: float, mu: float) -> float:
    """Quantile of the stretched shifted logit-normal (no uniform share, ignoring the eps reflection)."""
    lo = 1 / (1 + math.exp(-(mu - 2.5758)))
    hi = 1 / (1 + math.exp(-(mu + 3.0902)))
    z = mu + math.sqrt(2) * torch.erfinv(torch.tensor(2 * q - 1.0, dtype=torch.float64)).item()
    return min(max((1 / (1 + math.exp(-z)) - lo) / (hi - lo), 0.0), 1.0)


@pytest.mark.parametrize("tokens", [1024, 4096])
def test_shifted_logit_normal_matches_its_distribution(tokens):
    s = LTXV2FlowMatchScheduler(training_uniform_prob=0.0)
    x = s.sample_sigmas(200_000, tokens, generator=torch.Generator().manual_seed(0))
    assert x.shape == (200_000,) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    mu = token_shift(tokens, 0.95, 2.05, 1024, 4096)
    for q in (0.1, 0.5, 0.9):
        assert float(torch.quantile(x, q)) == pytest.approx(_stretched_quantile(q, mu), abs=5e-3)


def test_shift_grows_with_tokens_and_uniform_share():
    s = LTXV2FlowMatchScheduler()
    g = torch.Generator().manual_seed(1)
    small, large = s.sample_sigmas(50_000, 1024, generator=g), s.sample_sigmas(50_000, 4096, generator=g)
    assert float(large.mean()) > float(small.mean()) + 0.05
    # all-uniform: uniform on [eps, 1)
    u = LTXV2FlowMatchScheduler(training_uniform_prob=1.0).sample_sigmas(50_000, 1024, generator=g)
    assert float(u.min()) >= 1e-3 and float(u.mean()) == pytest.approx(0.5, abs=0.01)
    # 10 % uniform draws (the default) put ~10 % * 5 % of the mass below 0.05, where the stretched part has ~0
    low = LTXV2FlowMatchScheduler(training_uniform_prob=0.0).sample_sigmas(50_000, 4096, generator=g)
    mixed = s.sample_sigmas(50_000, 4096, generator=g)
    assert float((mixed < 0.05).float().mean()) > float((low < 0.05).float().mean()) + 0.003


def test_uniform_sampling_and_reproducibility():
    s = LTXV2FlowMatchScheduler(training_sampling="uniform")
    a = s.sample_sigmas(4, 100, generator=torch.Generator().manual_seed(3))
    b = s.sample_sigmas(4, 100, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    x = s.sample_sigmas(50_000, 100, generator=torch.Generator().manual_seed(3))
    assert float(x.mean()) == pytest.approx(0.5, abs=0.01) and float(x.min()) >= 0.0
    with pytest.raises(ValueError, match="shifted_logit_normal, uniform"):
        LTXV2FlowMatchScheduler(training_sampling="cosine")


def test_training_sigmas_shared_or_independent_audio():
    g = torch.Generator().manual_seed(0)
    shared = LTXV2FlowMatchScheduler().sample_training_sigmas(3, 2048, 126, generator=g)
    assert torch.equal(shared["video"], shared["audio"])
    indep = LTXV2FlowMatchScheduler(independent_audio_sigma=True).sample_training_sigmas(3, 2048, 126, generator=g)
    assert not torch.equal(indep["video"], indep["audio"])
    audio_only = LTXV2FlowMatchScheduler().sample_training_sigmas(3, None, 126, generator=g)
    assert list(audio_only) == ["audio"]


def test_add_noise_and_velocity():
    x0, noise = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    s = torch.tensor([0.25, 1.0])
    xt = add_noise(x0, noise, s)
    assert torch.allclose(xt[0], 0.25 * noise[0] + 0.75 * x0[0]) and torch.equal(xt[1], noise[1])
    per_token = torch.rand(2, 5)
    expected = per_token[..., None] * noise + (1 - per_token[..., None]) * x0
    assert torch.allclose(add_noise(x0, noise, per_token), expected)
    assert torch.equal(velocity(x0, noise), noise - x0)
    assert torch.equal(LTXV2FlowMatchScheduler.velocity(x0, noise), noise - x0)
    # unpacked [B, C, F, H, W] latents with per-sample sigmas
    v = torch.randn(2, 3, 1, 2, 2)
    assert torch.allclose(add_noise(v, torch.zeros_like(v), s), v * (1 - s).view(2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="do not match"):
        add_noise(x0, noise, torch.rand(3))


def test_sigmas_from_timesteps_by_format():
    conv = LTXV2FlowMatchScheduler.sigmas_from_timesteps
    assert torch.allclose(conv(torch.tensor([1.0, 501.0, 1000.0]), "flowmatch_1_1000"), torch.tensor([0.0, 0.5, 0.999]))
    assert torch.allclose(conv([0.0, 500.0], TimestepFormat.LEGACY_0_1000), torch.tensor([0.0, 0.5]))
    assert torch.allclose(conv([0.25], "sd3_0_1"), torch.tensor([0.25]))
    with pytest.raises(ValueError, match="outside"):
        conv([0.5], "flowmatch_1_1000")
    with pytest.raises(ValueError, match="flowmatch_1_1000, legacy_0_1000, sd3_0_1"):
        conv([0.5], None)
