"""Our adapters vs the official reference model (`ltx-core`'s `LTXModel`), bit-exact in fp32.

The same random tiny weights (`tiny` / `tiny-2.3` presets) go into both (official names through
`models/keymap.py`, official config through `models/official_config.py`); the official side
gets inputs built with its own tools (patchifiers, pixel coordinates, `Modality`), our side only the batch
dict, sigmas and noise. Covered: LTX-2.0 and LTX-2.3 layouts; equal, different and per-token sigmas;
av, video-only and audio-only modes (the official model run with the other modality absent).
ltx-core 1.0.0 computes the audio<->video cross-attention modulation with the rule we call `legacy`.
"""

from __future__ import annotations

import pytest
import torch

ltx_core = pytest.importorskip("ltx_core")

from diffusers import LTX2Pipeline  # noqa: E402
from ltx_core.components.patchifiers import AudioPatchifier, VideoLatentPatchifier, get_pixel_coords  # noqa: E402
from ltx_core.guidance.perturbations import BatchedPerturbationConfig  # noqa: E402
from ltx_core.model.transformer.modality import Modality  # noqa: E402
from ltx_core.model.transformer.model_configurator import LTXModelConfigurator  # noqa: E402
from ltx_core.types import AudioLatentShape, SpatioTemporalScaleFactors, VideoLatentShape  # noqa: E402

from ltxv2_diffusers.models import presets  # noqa: E402
from ltxv2_diffusers.models.adapter import (  # noqa: E402
    LTXAudioModelAdapter,
    LTXAVModelAdapter,
    LTXV2ModelAdapter,
    context_widths,
)
from ltxv2_diffusers.models.keymap import transformer_key_to_official  # noqa: E402
from ltxv2_diffusers.models.official_config import transformer_config_to_official  # noqa: E402

B, F, H, W, NA, L = 2, 3, 2, 3, 6, 7
FPS = 25.0

PRESET_FOR_LAYOUT = {"2.0": "tiny", "2.3": "tiny-2.3"}


def _components(layout: str) -> dict:
    return presets.build_components(PRESET_FOR_LAYOUT[layout], seed=3, components=("transformer", "vae", "audio_vae"))


def _official_model(transformer):
    # The official config comes from our converter (models/official_config.py), as when saving checkpoints.
    model = LTXModelConfigurator.from_config({"transformer": transformer_config_to_official(transformer.config)})
    state = {transformer_key_to_official(k): v for k, v in transformer.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


@pytest.fixture(scope="module", params=["2.0", "2.3"])
def models(request):
    comps = _components(request.param)
    gen = torch.Generator().manual_seed(11)
    vae, audio_vae = comps["vae"], comps["audio_vae"]
    # Non-trivial statistics; the audio ones one per packed feature, as in official checkpoints.
    vae.latents_mean.copy_(torch.randn(128, generator=gen))
    vae.latents_std.copy_(torch.rand(128, generator=gen) + 0.5)
    audio_vae.register_buffer("latents_mean", torch.randn(128, generator=gen))
    audio_vae.register_buffer("latents_std", torch.rand(128, generator=gen) + 0.5)
    return request.param, comps, _official_model(comps["transformer"])


def _batch(transformer, gen):
    vw, aw = context_widths(transformer.config)
    text_mask = torch.ones(B, L, dtype=torch.long)
    text_mask[1, 5:] = 0
    return {
        "latents": torch.randn(B, 128, F, H, W, generator=gen),
        "audio_latents": torch.randn(B, 8, NA, 16, generator=gen),
        "audio_lengths": torch.tensor([NA, NA - 2]),
        "text": torch.randn(B, L, vw + aw, generator=gen),
        "text_mask": text_mask,
        "fps": torch.full((B,), FPS),
    }


def _official_inputs(batch, comps, sigmas, noise, vw):
    """x_t, positions and contexts the official way (pipeline normalization, ltx-core patchify/coords)."""
    vae, audio_vae = comps["vae"], comps["audio_vae"]
    v0 = LTX2Pipeline._normalize_latents(batch["latents"], vae.latents_mean, vae.latents_std)
    v0 = VideoLatentPatchifier(patch_size=1).patchify(v0)
    a0 = AudioPatchifier(patch_size=1).patchify(batch["audio_latents"])
    a0 = LTX2Pipeline._normalize_audio_latents(a0, audio_vae.latents_mean, audio_vae.latents_std)

    def noised(x0, n, s):
        s = s.view(B, -1, 1)
        return s * n + (1 - s) * x0

    bounds = VideoLatentPatchifier(patch_size=1).get_patch_grid_bounds(VideoLatentShape(B, 128, F, H, W))
    v_pos = get_pixel_coords(bounds, SpatioTemporalScaleFactors.default(), causal_fix=True).float()
    v_pos[:, 0, ...] = v_pos[:, 0, ...] / FPS
    a_pos = AudioPatchifier(patch_size=1).get_patch_grid_bounds(AudioLatentShape(B, 8, NA, 16))
    text = batch["text"]
    return {
        "video": (noised(v0, noise["video"], sigmas["video"]), noise["video"] - v0, v_pos, text[..., :vw]),
        "audio": (noised(a0, noise["audio"], sigmas["audio"]), noise["audio"] - a0, a_pos, text[..., vw:]),
    }


def _modality(x_t, pos, ctx, s, mask):
    per_sample = s.amax(dim=1) if s.ndim == 2 else s
    timesteps = s if s.ndim == 2 else s.view(-1, 1)
    return Modality(latent=x_t, sigma=per_sample, timesteps=timesteps, positions=pos, context=ctx, context_mask=mask)


SIGMA_CASES = ["equal", "different", "per_token"]


def _sigmas(case, gen):
    v = torch.rand(B, generator=gen)
    if case == "equal":
        return {"video": v, "audio": v.clone()}
    if case == "different":
        return {"video": v, "audio": torch.rand(B, generator=gen)}
    tok_v = v[:, None].repeat(1, F * H * W)
    tok_v[:, : H * W] = 0.0  # first latent frame is a clean conditioning frame
    return {"video": tok_v, "audio": torch.rand(B, NA, generator=gen)}


@pytest.mark.parametrize("case", SIGMA_CASES)
def test_av_matches_official_bit_exact(models, case):
    layout, comps, official = models
    tr = comps["transformer"]
    gen = torch.Generator().manual_seed(SIGMA_CASES.index(case))
    batch = _batch(tr, gen)
    sigmas = _sigmas(case, gen)
    noise = {"video": torch.randn(B, F * H * W, 128, generator=gen), "audio": torch.randn(B, NA, 128, generator=gen)}
    # ltx-core 1.0.0 is the legacy audio<->video timestep rule; tests/test_official_fixtures.py checks
    # the current one against the official code of today.
    adapter = LTXAVModelAdapter.from_components(
        tr, vae=comps["vae"], audio_vae=comps["audio_vae"], av_timestep_rule="legacy"
    )
    with torch.no_grad():
        ours = adapter(batch, sigmas=sigmas, noise=noise)
        ref = _official_inputs(batch, comps, sigmas, noise, context_widths(tr.config)[0])
        mods = {k: _modality(ref[k][0], ref[k][2], ref[k][3], sigmas[k], batch["text_mask"]) for k in ref}
        vx, ax = official(mods["video"], mods["audio"], BatchedPerturbationConfig.empty(B))
    assert torch.equal(ours["video"].target, ref["video"][1])
    assert torch.equal(ours["audio"].target, ref["audio"][1])
    assert torch.equal(ours["video"].pred, vx), f"{layout}/{case}: max diff {(ours['video'].pred - vx).abs().max()}"
    assert torch.equal(ours["audio"].pred, ax), f"{layout}/{case}: max diff {(ours['audio'].pred - ax).abs().max()}"
    if case == "per_token":
        assert not ours["video"].mask[:, : H * W].any() and ours["video"].mask[:, H * W :].all()


@pytest.mark.parametrize("mode", ["video", "audio"])
def test_single_modality_matches_official_without_other_modality(models, mode):
    """Isolated video-only / audio-only training equals the official model run with the other modality absent."""
    layout, comps, official = models
    tr = comps["transformer"]
    gen = torch.Generator().manual_seed(5)
    batch = _batch(tr, gen)
    sigmas = _sigmas("different", gen)
    noise = {"video": torch.randn(B, F * H * W, 128, generator=gen), "audio": torch.randn(B, NA, 128, generator=gen)}
    cls = LTXV2ModelAdapter if mode == "video" else LTXAudioModelAdapter
    adapter = cls.from_components(tr, vae=comps["vae"], audio_vae=comps["audio_vae"])
    with torch.no_grad():
        ours = adapter(batch, sigmas={mode: sigmas[mode]}, noise=noise)
        ref = _official_inputs(batch, comps, sigmas, noise, context_widths(tr.config)[0])[mode]
        m = _modality(ref[0], ref[2], ref[3], sigmas[mode], batch["text_mask"])
        vx, ax = official(m, None, BatchedPerturbationConfig.empty(B)) if mode == "video" else official(
            None, m, BatchedPerturbationConfig.empty(B)
        )
    pred = vx if mode == "video" else ax
    assert list(ours) == [mode]
    assert torch.equal(ours[mode].pred, pred), f"{layout}/{mode}: max diff {(ours[mode].pred - pred).abs().max()}"
