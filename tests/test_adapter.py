"""Model adapters on the real tiny LTX-2 transformer: round trips, flow matching, masks, modality isolation,
text-width errors, RoPE coordinates from fps, gradient checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import LTX2Pipeline

from ltxv2_diffusers.models.adapter import (
    LTXAudioModelAdapter,
    LTXAVModelAdapter,
    LTXModelAdapterBase,
    LTXV2ModelAdapter,
    adapter_class_for_mode,
    context_widths,
)
from conftest import tiny_components_with_statistics
from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.modes import LtxMode

B, F, H, W, NA, L = 2, 2, 2, 3, 5, 6


@pytest.fixture(scope="module")
def comps():
    return tiny_components_with_statistics(seed=1)


def make_batch(transformer, seed=0, text_width=None):
    gen = torch.Generator().manual_seed(seed)
    vw, aw = context_widths(transformer.config)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 4:] = False
    return {
        "latents": torch.randn(B, 128, F, H, W, generator=gen),
        "audio_latents": torch.randn(B, 8, NA, 16, generator=gen),
        "audio_lengths": torch.tensor([NA, 2]),
        "text": torch.randn(B, L, text_width or vw + aw, generator=gen),
        "text_mask": mask,
        "fps": torch.tensor([24.0, 24.0]),
    }


def noise_for(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(B, F * H * W, 128, generator=gen), "audio": torch.randn(B, NA, 128, generator=gen)}


SIGMAS = {"video": torch.tensor([0.3, 0.8]), "audio": torch.tensor([0.6, 0.1])}


def run(adapter, batch, sigmas=SIGMAS, noise=None):
    with torch.no_grad():
        return adapter(batch, sigmas={k: v for k, v in sigmas.items()}, noise=noise or noise_for())


def test_from_components_wraps_without_copy_and_takes_vae_statistics(comps):
    tr = comps["transformer"]
    a = LTXAVModelAdapter.from_components(tr, vae=comps["vae"], audio_vae=comps["audio_vae"])
    assert a.transformer is tr
    assert not any(p.is_meta for p in a.parameters())
    assert a.config.latents_mean == [float(v) for v in comps["vae"].latents_mean]
    # per-channel audio statistics spread over each channel's 16 mel bins (channel-major packing)
    assert len(a.config.audio_latents_mean) == 128
    assert a.config.audio_latents_mean[16:32] == [float(comps["audio_vae"].latents_mean[1])] * 16
    assert a.config.transformer_config["num_layers"] == tr.config.num_layers


def test_save_pretrained_round_trip(comps, tmp_path):
    a = LTXAVModelAdapter.from_components(comps["transformer"], vae=comps["vae"], audio_vae=comps["audio_vae"])
    a.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["_class_name"] == "LTXAVModelAdapter" and cfg["transformer_config"]["rope_type"] == "split"
    b = LTXAVModelAdapter.from_pretrained(tmp_path)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.config.latents_std == a.config.latents_std
    batch = make_batch(a.transformer)
    oa, ob = run(a, batch), run(b, batch)
    for m in ("video", "audio"):
        assert torch.equal(oa[m].pred, ob[m].pred) and torch.equal(oa[m].target, ob[m].target)


def test_flow_matching_target_normalization_and_packing(comps):
    a = LTXAVModelAdapter.from_components(comps["transformer"], vae=comps["vae"], audio_vae=comps["audio_vae"])
    batch = make_batch(a.transformer)
    noise = noise_for()
    out = run(a, batch, noise=noise)
    v0 = LTX2Pipeline._pack_latents(
        LTX2Pipeline._normalize_latents(batch["latents"], comps["vae"].latents_mean, comps["vae"].latents_std)
    )
    a_packed = LTX2Pipeline._pack_audio_latents(batch["audio_latents"])
    a_mean = torch.tensor(a.config.audio_latents_mean)
    a_std = torch.tensor(a.config.audio_latents_std)
    a0 = (a_packed - a_mean) / a_std
    assert torch.equal(out["video"].target, noise["video"] - v0)
    assert torch.allclose(out["audio"].target, noise["audio"] - a0, atol=1e-6)
    assert out["video"].pred.shape == (B, F * H * W, 128) and out["audio"].pred.shape == (B, NA, 128)
    assert torch.equal(out["video"].sigmas, SIGMAS["video"])
    # noise given unpacked (shaped like the latents) is packed the same way
    unpacked = {"video": LTX2Pipeline._unpack_latents(noise["video"], F, H, W),
                "audio": LTX2Pipeline._unpack_audio_latents(noise["audio"], NA, 16)}
    out2 = run(a, batch, noise=unpacked)
    assert torch.equal(out2["video"].pred, out["video"].pred) and torch.equal(out2["audio"].pred, out["audio"].pred)


def test_generator_makes_noise_reproducible(comps):
    a = LTXV2ModelAdapter.from_components(comps["transformer"])
    batch = make_batch(a.transformer)
    with torch.no_grad():
        o1 = a(batch, sigmas=SIGMAS, generator=torch.Generator().manual_seed(4))
        o2 = a(batch, sigmas=SIGMAS, generator=torch.Generator().manual_seed(4))
        o3 = a(batch, sigmas=SIGMAS, generator=torch.Generator().manual_seed(5))
    assert torch.equal(o1["video"].target, o2["video"].target)
    assert not torch.equal(o1["video"].target, o3["video"].target)


def test_masks_from_audio_lengths_and_per_token_sigmas(comps):
    a = LTXAVModelAdapter.from_components(comps["transformer"])
    batch = make_batch(a.transformer)
    out = run(a, batch)
    assert out["audio"].mask.tolist() == [[True] * NA, [True, True, False, False, False]]
    assert out["video"].mask.all()
    tok = SIGMAS["video"][:, None].repeat(1, F * H * W)
    tok[:, : H * W] = 0.0  # clean conditioning frame
    out = run(a, batch, sigmas={"video": tok, "audio": SIGMAS["audio"]})
    assert out["video"].mask.tolist() == [[False] * (H * W) + [True] * (F - 1) * H * W] * B
    assert torch.equal(out["video"].sigmas, tok)


def test_video_mode_output_is_independent_of_audio(comps):
    a = LTXV2ModelAdapter.from_components(comps["transformer"])
    batch = make_batch(a.transformer)
    other = dict(batch, audio_latents=torch.randn(B, 8, NA + 3, 16), audio_lengths=torch.tensor([1, 1]))
    o1 = run(a, batch, sigmas={"video": SIGMAS["video"]})
    o2 = run(a, other, sigmas={"video": SIGMAS["video"]})
    # audio latents are not even needed
    o3 = run(a, {k: v for k, v in batch.items() if not k.startswith("audio")}, sigmas={"video": SIGMAS["video"]})
    assert list(o1) == ["video"]
    assert torch.equal(o1["video"].pred, o2["video"].pred) and torch.equal(o1["video"].pred, o3["video"].pred)
    # the av adapter on the same weights does see the audio: the isolation above is not vacuous
    av = LTXAVModelAdapter.from_components(comps["transformer"])
    p1 = run(av, batch)["video"].pred
    p2 = run(av, dict(batch, audio_latents=batch["audio_latents"] + 1.0))["video"].pred
    assert not torch.equal(p1, p2)


def test_audio_mode_output_is_independent_of_video(comps):
    a = LTXAudioModelAdapter.from_components(comps["transformer"])
    batch = make_batch(a.transformer)
    o1 = run(a, batch, sigmas={"audio": SIGMAS["audio"]})
    o2 = run(a, dict(batch, latents=torch.randn(B, 128, 3, 4, 4)), sigmas={"audio": SIGMAS["audio"]})
    o3 = run(a, {k: v for k, v in batch.items() if k != "latents"}, sigmas={"audio": SIGMAS["audio"]})
    assert list(o1) == ["audio"]
    assert torch.equal(o1["audio"].pred, o2["audio"].pred) and torch.equal(o1["audio"].pred, o3["audio"].pred)
    av = LTXAVModelAdapter.from_components(comps["transformer"])
    shifted = dict(batch, latents=batch["latents"] + 1)
    assert not torch.equal(run(av, batch)["audio"].pred, run(av, shifted)["audio"].pred)


def test_text_width_errors_name_the_caching_flag(comps):
    tr = comps["transformer"]
    vw, aw = context_widths(tr.config)
    av = LTXAVModelAdapter.from_components(tr)
    with pytest.raises(ValueError, match="--ltxv2_audio_video") as e:
        run(av, make_batch(tr, text_width=vw))  # video-only cache in av mode
    assert "ltxv2-cache-text-encoder-outputs" in str(e.value)
    with pytest.raises(ValueError, match="--text_encoder_backend") as e:
        run(LTXV2ModelAdapter.from_components(tr), make_batch(tr, text_width=vw + aw + 5))
    assert "fits neither" in str(e.value) and "--ltxv2_audio_video" in str(e.value)
    with pytest.raises(ValueError, match="--ltxv2_audio_video"):
        run(LTXAudioModelAdapter.from_components(tr), make_batch(tr, text_width=vw), sigmas={"audio": SIGMAS["audio"]})


def test_video_mode_accepts_both_text_layouts(comps):
    tr = comps["transformer"]
    vw, _ = context_widths(tr.config)
    a = LTXV2ModelAdapter.from_components(tr)
    batch = make_batch(tr)
    video_only = dict(batch, text=batch["text"][..., :vw].contiguous())
    assert torch.equal(run(a, batch)["video"].pred, run(a, video_only)["video"].pred)


def test_bad_inputs_are_clear_errors(comps):
    tr = comps["transformer"]
    a = LTXAVModelAdapter.from_components(tr)
    batch = make_batch(tr)
    with pytest.raises(KeyError, match="audio_latents"):
        run(a, {k: v for k, v in batch.items() if k != "audio_latents"})
    with pytest.raises(KeyError, match="'audio'"):
        run(a, batch, sigmas={"video": SIGMAS["video"]})
    with pytest.raises(ValueError, match=r"expected \[2\] or \[2, 12\]"):
        run(a, batch, sigmas={"video": torch.rand(B, 5), "audio": SIGMAS["audio"]})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        run(a, batch, sigmas={"video": torch.tensor([0.5, 1.5]), "audio": SIGMAS["audio"]})
    with pytest.raises(ValueError, match="fps"):
        run(a, dict(batch, fps=torch.tensor([24.0, 0.0])))


def test_fps_sets_the_rope_time_axis_per_item(comps):
    a = LTXV2ModelAdapter.from_components(comps["transformer"])
    batch = make_batch(a.transformer)
    sig = {"video": SIGMAS["video"]}
    p24 = run(a, batch, sigmas=sig)["video"].pred
    p30 = run(a, dict(batch, fps=torch.tensor([30.0, 30.0])), sigmas=sig)["video"].pred
    mixed = run(a, dict(batch, fps=torch.tensor([24.0, 30.0])), sigmas=sig)["video"].pred
    assert not torch.equal(p24, p30)
    assert torch.equal(mixed[0], p24[0]) and torch.equal(mixed[1], p30[1])
    # no fps key means 24 fps
    assert torch.equal(run(a, {k: v for k, v in batch.items() if k != "fps"}, sigmas=sig)["video"].pred, p24)


def test_gradient_checkpointing_gives_the_same_gradients(comps):
    tr = build_components("tiny", seed=2, components=("transformer",))["transformer"]
    a = LTXAVModelAdapter.from_components(tr).train()
    batch = make_batch(tr)

    def grads():
        a.zero_grad()
        out = a(batch, sigmas=SIGMAS, noise=noise_for())
        loss = sum(((o.pred.float() - o.target) ** 2)[o.mask].mean() for o in out.values())
        loss.backward()
        return {n: p.grad.clone() for n, p in a.named_parameters() if p.grad is not None}

    plain = grads()
    tr.enable_gradient_checkpointing()
    assert tr.gradient_checkpointing
    ckpt = grads()
    assert plain.keys() == ckpt.keys() and len(plain) > 10
    assert all(torch.allclose(plain[k], ckpt[k], atol=1e-6) for k in plain)
    tr.disable_gradient_checkpointing()
    a.enable_gradient_checkpointing()  # the adapter switch reaches the wrapped transformer
    assert tr.gradient_checkpointing


def test_adapter_class_for_mode():
    assert adapter_class_for_mode("video") is LTXV2ModelAdapter
    assert adapter_class_for_mode(LtxMode.AV) is LTXAVModelAdapter
    assert adapter_class_for_mode("audio") is LTXAudioModelAdapter
    assert all(issubclass(c, LTXModelAdapterBase) for c in (LTXV2ModelAdapter, LTXAVModelAdapter))
    with pytest.raises(ValueError):
        adapter_class_for_mode("image")


def test_bf16_model_keeps_float32_targets(comps):
    tr = build_components("tiny", seed=2, components=("transformer",), torch_dtype=torch.bfloat16)["transformer"]
    a = LTXAVModelAdapter.from_components(tr)
    out = run(a, make_batch(tr))
    assert out["video"].pred.dtype == torch.bfloat16 and out["video"].target.dtype == torch.float32
    assert torch.isfinite(out["audio"].pred.float()).all()


def test_pipeline_model_index_names_the_adapter(comps, tmp_path):
    from diffusers import DiffusionPipeline

    from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

    class AdapterPipeline(DiffusionPipeline):
        def __init__(self, transformer, scheduler):
            super().__init__()
            self.register_modules(transformer=transformer, scheduler=scheduler)

    adapter = LTXAVModelAdapter.from_components(comps["transformer"], vae=comps["vae"], audio_vae=comps["audio_vae"])
    AdapterPipeline(adapter, LTXV2FlowMatchScheduler()).save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    # our components are named by the package (tests/test_diffusers_loading.py reloads them in a fresh process)
    assert index["transformer"] == ["ltxv2_diffusers", "LTXAVModelAdapter"]
    assert index["scheduler"] == ["ltxv2_diffusers", "LTXV2FlowMatchScheduler"]
    loaded = AdapterPipeline.from_pretrained(tmp_path)
    assert type(loaded.transformer) is LTXAVModelAdapter and type(loaded.scheduler) is LTXV2FlowMatchScheduler
    batch = make_batch(adapter.transformer)
    assert torch.equal(run(loaded.transformer, batch)["video"].pred, run(adapter, batch)["video"].pred)
