"""Conditioned training on the real tiny LTX-2 transformer: first-frame / extension tokens clean with
timestep 0 and no loss, IC-LoRA reference tokens appended at the official positions, reference dropout,
strategies. The official numbers (inference positions; the official trainer's video_to_video and flexible
strategies' model inputs) are fixtures written by tests/fixtures/make_conditioning_fixtures.py from the
official source at 400fd31."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from ltxv2_diffusers.conditioning import (
    ConditioningOptions,
    apply_conditioning,
    infer_reference_scales,
    video_clean_mask,
)
from ltxv2_diffusers.models.adapter import LTXAudioModelAdapter, LTXAVModelAdapter, LTXV2ModelAdapter, context_widths
from conftest import tiny_components_with_statistics
from ltxv2_diffusers.models.presets import build_components

FIXTURES = load_file(str(Path(__file__).parent / "fixtures" / "conditioning_positions.safetensors"))


@pytest.fixture(scope="module")
def comps():
    return tiny_components_with_statistics(seed=3, audio_statistics=False)


def capture(adapter):
    """Record the keyword arguments the adapter passes to the transformer (a forward pre-hook; the real model runs)."""
    seen = {}

    def hook(module, args, kwargs):
        seen.update(kwargs)

    handle = adapter.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    return seen, handle


def batch_for(transformer, grid, b=1, fps=24.0, seed=0, audio=None):
    gen = torch.Generator().manual_seed(seed)
    vw, aw = context_widths(transformer.config)
    out = {
        "latents": torch.randn(b, 128, *grid, generator=gen),
        "text": torch.randn(b, 4, vw + aw, generator=gen),
        "text_mask": torch.ones(b, 4, dtype=torch.bool),
        "fps": torch.full((b,), fps),
    }
    if audio is not None:
        out["audio_latents"] = torch.randn(b, 8, audio, 16, generator=gen)
    return out


@pytest.mark.parametrize("case", ["same", "down2", "temporal2", "down2_temporal2", "image_ref"])
def test_reference_positions_match_official(comps, case):
    tf, th, tw, rf, rh, rw, down, temporal, fps = FIXTURES[f"{case}.meta"].tolist()
    adapter = LTXV2ModelAdapter.from_components(comps["transformer"], vae=comps["vae"])
    batch = batch_for(adapter.transformer, (int(tf), int(th), int(tw)), fps=fps)
    batch["reference_latents"] = torch.randn(1, 128, int(rf), int(rh), int(rw))
    assert infer_reference_scales((int(tf), int(th), int(tw)), (int(rf), int(rh), int(rw))) == (down, temporal)
    seen, handle = capture(adapter)
    with torch.no_grad():
        out = adapter(batch, sigmas={"video": torch.tensor([0.7])})
    handle.remove()
    official = FIXTURES[f"{case}.positions"]
    assert seen["video_coords"].shape == official.shape
    torch.testing.assert_close(seen["video_coords"], official, rtol=0, atol=0)
    n_target = int(tf * th * tw)
    # Reference tokens: timestep 0 (official denoise mask 0), clean latents; target tokens: the sampled sigma.
    timestep = seen["timestep"][0]
    assert torch.all(timestep[n_target:] == 0) and torch.all(timestep[:n_target] > 0)
    assert torch.all(FIXTURES[f"{case}.denoise_mask"][0, n_target:] == 0)
    assert out["video"].pred.shape[1] == n_target == out["video"].target.shape[1] == out["video"].mask.shape[1]


@pytest.mark.parametrize("negative", [False, True])
def test_audio_reference_positions_match_official(comps, negative):
    n_target, n_ref = (int(v) for v in FIXTURES["audio.meta"].tolist())
    adapter = LTXAudioModelAdapter.from_components(comps["transformer"], audio_vae=comps["audio_vae"])
    batch = batch_for(adapter.transformer, (1, 1, 1), audio=n_target)
    batch["reference_audio_latents"] = torch.randn(1, 8, n_ref, 16)
    options = ConditioningOptions(ic_lora_strategy="audio_ref_ic", audio_ref_negative_positions=negative)
    batch, sigmas = apply_conditioning(batch, {"audio": torch.tensor([0.5])}, options)
    seen, handle = capture(adapter)
    with torch.no_grad():
        out = adapter(batch, sigmas=sigmas)
    handle.remove()
    official = FIXTURES[f"audio.{'negative' if negative else 'plain'}.positions"]
    torch.testing.assert_close(seen["audio_coords"], official, rtol=0, atol=0)
    assert torch.all(seen["audio_timestep"][0, n_target:] == 0)
    assert out["audio"].pred.shape[1] == n_target


def test_first_frame_tokens_are_clean_timestep_zero_no_loss_and_their_noise_changes_nothing(comps):
    adapter = LTXV2ModelAdapter.from_components(comps["transformer"], vae=comps["vae"])
    f, h, w = 3, 2, 3
    batch = batch_for(adapter.transformer, (f, h, w), b=2)
    options = ConditioningOptions(first_frame_p=1.0)
    batch, sigmas = apply_conditioning(batch, {"video": torch.tensor([0.4, 0.9])}, options,
                                       generator=torch.Generator().manual_seed(0))
    first = h * w
    assert sigmas["video"].shape == (2, f * h * w)
    assert torch.all(sigmas["video"][:, :first] == 0) and torch.all(sigmas["video"][:, first:] > 0)
    gen = torch.Generator().manual_seed(5)
    noise = torch.randn(2, f * h * w, 128, generator=gen)
    other = noise.clone()
    other[:, :first] = torch.randn(2, first, 128, generator=gen) * 3
    seen, handle = capture(adapter)
    with torch.no_grad():
        a = adapter(batch, sigmas=sigmas, noise={"video": noise})["video"]
        x_t = seen["hidden_states"].clone()
        timestep = seen["timestep"].clone()
        b = adapter(batch, sigmas=sigmas, noise={"video": other})["video"]
    handle.remove()
    # clean: the model input of the first frame is the normalized latent itself
    mean = torch.tensor(adapter.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(adapter.config.latents_std).view(1, -1, 1, 1, 1)
    clean = ((batch["latents"] - mean) / std).flatten(2).transpose(1, 2)
    torch.testing.assert_close(x_t[:, :first].float(), clean[:, :first])
    assert torch.all(timestep[:, :first] == 0)
    assert not a.mask[:, :first].any() and a.mask[:, first:].all()
    # their noise reaches neither the prediction nor the loss-bearing targets
    torch.testing.assert_close(a.pred, b.pred, rtol=0, atol=0)
    torch.testing.assert_close(a.target[:, first:], b.target[:, first:], rtol=0, atol=0)
    from ltxv2_diffusers.training.losses import masked_mse

    assert masked_mse(a.pred, a.target, a.mask) == masked_mse(b.pred, b.target, b.mask)


def test_first_frame_probability_is_per_item_and_skips_single_frames():
    latents = torch.zeros(64, 128, 3, 1, 2)
    mask = video_clean_mask(latents, ConditioningOptions(first_frame_p=0.5), torch.Generator().manual_seed(1))
    chosen = mask[:, :2].all(dim=1)
    assert 10 < int(chosen.sum()) < 54 and not mask[:, 2:].any()
    assert video_clean_mask(torch.zeros(2, 128, 1, 2, 2), ConditioningOptions(first_frame_p=1.0)) is None
    # per-item generators: an item's draw does not depend on its neighbours
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]  # noqa: E731
    one = video_clean_mask(latents[:2], ConditioningOptions(first_frame_p=0.5), gens())
    two = video_clean_mask(latents[:2], ConditioningOptions(first_frame_p=0.5), gens())
    assert torch.equal(one, two)


def test_extension_prefix_suffix_masks():
    latents = torch.zeros(2, 128, 5, 2, 2)
    mask = video_clean_mask(latents, ConditioningOptions(extend_prefix_frames=2, extend_suffix_frames=1))
    per_frame = mask.view(2, 5, 4)
    assert per_frame[:, :2].all() and per_frame[:, 4].all() and not per_frame[:, 2:4].any()
    # a span covering the whole clip would leave nothing to learn: no conditioning
    assert video_clean_mask(torch.zeros(1, 128, 3, 1, 1), ConditioningOptions(extend_prefix_frames=3)) is None


def test_strategy_and_reference_dropout():
    batch = {"latents": torch.zeros(1, 128, 2, 1, 1), "reference_latents": torch.zeros(1, 128, 2, 1, 1),
             "audio_latents": torch.zeros(1, 8, 3, 16), "reference_audio_latents": torch.zeros(1, 8, 3, 16)}
    sig = {"video": torch.tensor([0.5]), "audio": torch.tensor([0.5])}
    kept, _ = apply_conditioning(batch, sig, ConditioningOptions(ic_lora_strategy="video_ref_only_av"))
    assert "reference_latents" in kept and "reference_audio_latents" not in kept
    kept, _ = apply_conditioning(batch, sig, ConditioningOptions(ic_lora_strategy="audio_ref_ic"))
    assert "reference_latents" not in kept and "reference_audio_latents" in kept
    none, _ = apply_conditioning(batch, sig, ConditioningOptions())
    assert "reference_latents" not in none and "reference_audio_latents" not in none
    gen = torch.Generator().manual_seed(0)
    drops = [("reference_latents" not in apply_conditioning(batch, sig, ConditioningOptions(
        ic_lora_strategy="av_ic", ref_probability=0.5), gen)[0]) for _ in range(40)]
    assert 5 < sum(drops) < 35


def test_from_args_defaults():
    args = SimpleNamespace(ic_lora_strategy="v2v", first_frame_conditioning_p=None)
    assert ConditioningOptions.from_args(args).first_frame_p == 0.1  # the official / musubi IC-LoRA default
    assert ConditioningOptions.from_args(SimpleNamespace()).active is False


def test_av_reference_train_step_backward(comps):
    """One TrainStep with a video reference in AV mode: loss is finite and gradients reach the model."""
    from ltxv2_diffusers.training.step import TrainStep

    adapter = LTXAVModelAdapter.from_components(comps["transformer"], vae=comps["vae"], audio_vae=comps["audio_vae"])
    batch = batch_for(adapter.transformer, (3, 2, 2), b=2, audio=4)
    batch["reference_latents"] = torch.randn(2, 128, 3, 1, 1)
    args = SimpleNamespace(mode=adapter.mode, independent_audio_sigmas=False, ic_lora_strategy="video_ref_only_av",
                           first_frame_conditioning_p=1.0, reference_downscale=2, weighting_scheme="none", video_loss_weight=1.0,
                           audio_loss_weight=1.0, timestep_sampling=None)
    step = TrainStep(adapter, args)
    adapter.zero_grad()
    loss, logs = step(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert adapter.transformer.proj_in.weight.grad is not None


def test_plugin_conditioning_masks_reach_the_model(comps):
    """A plugin's `ltxv2_conditioning_masks` keeps its tokens clean through the real TrainStep."""
    import types

    from ltxv2_diffusers import plugins
    from ltxv2_diffusers.hookspecs import hookimpl
    from ltxv2_diffusers.training.step import TrainStep

    module = types.ModuleType("left_half_plugin")

    @hookimpl
    def ltxv2_conditioning_masks(batch):
        b, _, f, h, w = batch["latents"].shape
        region = torch.zeros(f, h, w, dtype=torch.bool)
        region[:, :, : w // 2] = True
        return {"video": region.flatten().expand(b, -1)}

    module.ltxv2_conditioning_masks = ltxv2_conditioning_masks
    adapter = LTXV2ModelAdapter.from_components(comps["transformer"], vae=comps["vae"])
    batch = batch_for(adapter.transformer, (2, 2, 4), b=1)
    args = SimpleNamespace(mode=adapter.mode, independent_audio_sigmas=False, weighting_scheme="none",
                           video_loss_weight=1.0, audio_loss_weight=1.0, timestep_sampling=None)
    plugins.register_plugin(module, name="left_half_plugin")
    try:
        seen, handle = capture(adapter)
        with torch.no_grad():
            TrainStep(adapter, args)(batch, torch.Generator().manual_seed(0))
        handle.remove()
    finally:
        plugins.unregister_plugin("left_half_plugin")
    clean = (seen["timestep"][0] == 0).view(2, 2, 4)
    assert clean[:, :, :2].all() and not clean[:, :, 2:].any()


def test_reference_factor_flags_must_match_the_cached_shapes():
    batch = {"latents": torch.zeros(1, 128, 3, 4, 4), "reference_latents": torch.zeros(1, 128, 3, 2, 2)}
    sig = {"video": torch.tensor([0.5])}
    apply_conditioning(batch, sig, ConditioningOptions(ic_lora_strategy="v2v", reference_downscale=2))
    with pytest.raises(ValueError, match="--reference_downscale is 1: train with --reference_downscale 2"):
        apply_conditioning(batch, sig, ConditioningOptions(ic_lora_strategy="v2v"))


def test_appended_reference_equals_the_official_trainers_prepended_layout(comps):
    """The official trainer puts reference tokens before the target, inference after it: attention is
    bidirectional and positional, so the target's prediction is the same either way."""
    adapter = LTXV2ModelAdapter.from_components(comps["transformer"], vae=comps["vae"])
    batch = batch_for(adapter.transformer, (3, 2, 2), b=1)
    batch["reference_latents"] = torch.randn(1, 128, 3, 1, 1)
    options = ConditioningOptions(ic_lora_strategy="v2v", reference_downscale=2)
    batch, sigmas = apply_conditioning(batch, {"video": torch.tensor([0.6])}, options)
    seen, handle = capture(adapter)
    with torch.no_grad():
        ours = adapter(batch, sigmas=sigmas)["video"].pred
    handle.remove()
    n = ours.shape[1]
    moved = dict(seen)
    for key, dim in (("hidden_states", 1), ("timestep", 1), ("video_coords", 2)):
        target, ref = seen[key].narrow(dim, 0, n), seen[key].narrow(dim, n, seen[key].shape[dim] - n)
        moved[key] = torch.cat([ref, target], dim=dim)
    with torch.no_grad():
        prepended = adapter.transformer(**moved)[0]
    torch.testing.assert_close(prepended[:, -n:], ours, rtol=1e-5, atol=1e-5)


def test_audio_extension_suffix_ends_at_each_items_valid_length():
    from ltxv2_diffusers.conditioning import audio_clean_mask

    options = ConditioningOptions(audio_extend_prefix_frames=1, audio_extend_suffix_frames=2)
    mask = audio_clean_mask(torch.zeros(3, 8, 8, 16), options, lengths=torch.tensor([8, 5, 3]))
    assert mask[0].tolist() == [True, False, False, False, False, False, True, True]
    assert mask[1].tolist() == [True, False, False, True, True, False, False, False]  # padding stays out
    assert not mask[2].any()  # 3 valid frames: prefix + suffix would cover them all


def test_reference_frames_flag_must_match_the_cache():
    batch = {"latents": torch.zeros(1, 128, 3, 2, 2), "reference_latents": torch.zeros(1, 128, 2, 2, 2)}
    sig = {"video": torch.tensor([0.5])}
    apply_conditioning(batch, sig, ConditioningOptions(ic_lora_strategy="v2v", reference_frames=17,
                                                       reference_temporal_scale=2))
    with pytest.raises(ValueError, match="--reference_frames 33"):
        apply_conditioning(batch, sig, ConditioningOptions(ic_lora_strategy="v2v", reference_frames=33,
                                                           reference_temporal_scale=2))


def test_model_inputs_equal_the_official_trainers(comps):
    """One IC-LoRA batch with first-frame conditioning, half-size reference, 25 fps: model input, per-token
    timesteps, positions, flow-matching targets and loss mask equal what the official trainer's
    video_to_video strategy builds from the same latents, sigmas and noise (its reference tokens come first)."""
    t = {k.removeprefix("trainer."): v for k, v in FIXTURES.items() if k.startswith("trainer.")}
    n_ref, fps, down = t["meta"].tolist()
    n_ref = int(n_ref)
    # the official trainer reads normalized latents: give the adapter identity statistics
    adapter = LTXV2ModelAdapter.from_components(comps["transformer"])
    b = t["latents"].shape[0]
    vw, aw = context_widths(adapter.transformer.config)
    batch = {"latents": t["latents"], "reference_latents": t["reference"], "fps": torch.full((b,), fps),
             "text": torch.zeros(b, 4, vw + aw), "text_mask": torch.ones(b, 4, dtype=torch.bool)}
    options = ConditioningOptions(ic_lora_strategy="v2v", first_frame_p=1.0, reference_downscale=int(down))
    batch, sigmas = apply_conditioning(batch, {"video": t["sigma"]}, options)
    seen, handle = capture(adapter)
    with torch.no_grad():
        out = adapter(batch, sigmas=sigmas, noise={"video": t["noise"]})["video"]
    handle.remove()

    def official_order(x, dim):  # ours: target then reference; the official trainer: reference then target
        n = x.shape[dim] - n_ref
        return torch.cat([x.narrow(dim, n, n_ref), x.narrow(dim, 0, n)], dim=dim)

    torch.testing.assert_close(official_order(seen["hidden_states"], 1), t["model_input"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(official_order(seen["timestep"], 1) / 1000.0, t["timesteps"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(official_order(seen["video_coords"], 2), t["positions"], rtol=0, atol=0)
    torch.testing.assert_close(out.target, t["targets"], rtol=1e-6, atol=1e-6)
    assert torch.equal(out.mask, t["loss_mask"][:, n_ref:].bool())
    assert not t["loss_mask"][:, :n_ref].any()  # the official trainer's reference tokens carry no loss either
    torch.testing.assert_close(seen["sigma"] / 1000.0, t["sigma"])  # the per-sample sigma is the sampled one


def test_extension_and_audio_reference_inputs_equal_the_official_flexible_strategy(comps):
    """Audio+video batch: video first frame + 2-frame prefix + 1-frame suffix, audio 2-frame prefix + 1-frame suffix
    + an audio reference: the same model inputs as the official trainer's flexible strategy."""
    t = {k.removeprefix("flexible."): v for k, v in FIXTURES.items() if k.startswith("flexible.")}
    adapter = LTXAVModelAdapter.from_components(comps["transformer"])  # identity statistics: normalized latents
    b = t["video"].shape[0]
    vw, aw = context_widths(adapter.transformer.config)
    batch = {"latents": t["video"], "audio_latents": t["audio"], "reference_audio_latents": t["reference_audio"],
             "fps": torch.full((b,), 24.0), "text": torch.zeros(b, 4, vw + aw),
             "text_mask": torch.ones(b, 4, dtype=torch.bool)}
    options = ConditioningOptions(first_frame_p=1.0, extend_prefix_frames=2, extend_suffix_frames=1,
                                  audio_extend_prefix_frames=2, audio_extend_suffix_frames=1,
                                  ic_lora_strategy="audio_ref_ic")
    batch, sigmas = apply_conditioning(batch, {"video": t["sigma"], "audio": t["sigma"]}, options)
    seen, handle = capture(adapter)
    with torch.no_grad():
        out = adapter(batch, sigmas=sigmas, noise={"video": t["video.noise"], "audio": t["audio.noise"]})
    handle.remove()
    n_ref = t["reference_audio"].shape[2]

    def ref_first(x, dim):
        n = x.shape[dim] - n_ref
        return torch.cat([x.narrow(dim, n, n_ref), x.narrow(dim, 0, n)], dim=dim)

    torch.testing.assert_close(seen["hidden_states"], t["video.model_input"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(seen["timestep"] / 1000.0, t["video.timesteps"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(seen["video_coords"], t["video.positions"], rtol=0, atol=0)
    torch.testing.assert_close(ref_first(seen["audio_hidden_states"], 1), t["audio.model_input"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ref_first(seen["audio_timestep"], 1) / 1000.0, t["audio.timesteps"], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ref_first(seen["audio_coords"], 2), t["audio.positions"], rtol=0, atol=1e-6)
    for name, official_mask in (("video", t["video.loss_mask"]), ("audio", t["audio.loss_mask"][:, n_ref:])):
        torch.testing.assert_close(out[name].target, t[f"{name}.targets"], rtol=1e-6, atol=1e-6)
        assert torch.equal(out[name].mask, official_mask.bool()), name


@pytest.mark.parametrize("case", ["same", "down2"])
def test_ltx25_keyframe_marker_leaves_reference_tokens_unmarked(case):
    """LTX-2.5: a target keyframe marker (first latent frame) reaches the model extended over the appended
    reference tokens as official inference builds it: reference tokens are never marked."""
    tf, th, tw, rf, rh, rw, down, temporal, fps = FIXTURES[f"{case}.meta"].tolist()
    parts = build_components("tiny-2.5", seed=3, components=("transformer",))
    adapter = LTXV2ModelAdapter.from_components(parts["transformer"])
    batch = batch_for(adapter.transformer, (int(tf), int(th), int(tw)), fps=fps)
    batch["reference_latents"] = torch.randn(1, 128, int(rf), int(rh), int(rw))
    n = int(tf * th * tw)
    batch["keyframes_mask"] = torch.arange(n).unsqueeze(0) < th * tw  # the target's first latent frame
    seen, handle = capture(adapter)
    with torch.no_grad():
        adapter(batch, sigmas={"video": torch.tensor([0.7])})
    handle.remove()
    official = FIXTURES[f"{case}.keyframes_mask"].bool()
    assert torch.equal(seen["video_keyframes_mask"][..., 0].bool(), official)
