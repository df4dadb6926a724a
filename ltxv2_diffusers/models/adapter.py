"""Training adapters around diffusers' `LTX2VideoTransformer3DModel`: batch dict + sigmas in, per-modality
prediction, flow-matching target and loss mask out.

`LTXV2ModelAdapter` trains video (LTXV), `LTXAVModelAdapter` audio+video (LTXAV), `LTXAudioModelAdapter`
audio only. They are diffusers components (`ModelMixin` + `ConfigMixin`): the wrapped transformer's
config is part of the adapter's config and its weights are the adapter's `transformer.*` weights, so
`save_pretrained` / `from_pretrained` round-trip and a pipeline's `model_index.json` can name them.
Latent normalization statistics live in the config (float lists, never cast by `.to(dtype)`), so
training needs no VAE.

Forward (see docs/architecture.md):
    adapter(batch, sigmas={"video": [B] | [B, Nv], "audio": [B] | [B, Na]}, noise=None, generator=None)
        -> {"video": ModalityOutput, "audio": ModalityOutput}   (trained modalities only)
A per-token sigma of 0 marks a conditioning token: it stays clean, gets timestep 0 and is left out of
the loss mask; the per-sample sigma the model also needs (cross-modal and prompt modulation) is the
largest per-token sigma of the item. Optional `reference_latents` / `reference_audio_latents` in the
batch are IC-LoRA references: clean tokens appended after the target's, at the positions
`ltxv2_diffusers.conditioning` gives them; outputs cover the target tokens only. An optional
`batch["keyframes_mask"]` (bool `[B, Nv]` over the target's packed video tokens) marks tokens that encode a
single pixel frame (conditioning keyframes); LTX-2.5 adds its learned keyframe position embedding to them,
other versions ignore it; appended reference tokens are never marked, as in official inference. The
audio<->video cross-attention follows `av_timestep_rule` (models/av_timestep.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from diffusers import LTX2VideoTransformer3DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.torch_utils import randn_tensor

from ltxv2_diffusers import diffusers_component
from ltxv2_diffusers.conditioning.layout import (
    infer_reference_scales,
    reference_audio_coords,
    reference_video_coords,
)
from ltxv2_diffusers.models.av_timestep import (
    DEFAULT_AV_TIMESTEP_RULE,
    check_av_timestep_rule,
    own_scale_shift_timesteps,
)
from ltxv2_diffusers.models.normalization import (
    normalize_audio_tokens,
    normalize_video_latents,
    pack_audio_latents,
    pack_video_latents,
    packed_audio_stats,
)
from ltxv2_diffusers.models.scheduler import add_noise, velocity
from ltxv2_diffusers.modes import LtxMode

DEFAULT_FPS = 24.0


@dataclass
class ModalityOutput:
    """One modality's training outputs; token tensors are packed `[B, N, C]`.

    `pred` is in the transformer's dtype, `target` in float32, `mask` is bool `[B, N]` (True = counts in
    the loss), `sigmas` is what was used for noising: `[B]` or per token `[B, N]`.
    """

    pred: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    sigmas: torch.Tensor


def context_widths(transformer_config: Mapping[str, Any]) -> tuple[int, int]:
    """Widths of the video and audio text contexts the transformer takes.

    LTX-2.0 projects connector outputs inside the transformer (`caption_channels` wide for both);
    LTX-2.3 takes them already projected (`cross_attention_dim` / `audio_cross_attention_dim`).
    """
    c = transformer_config
    if c.get("use_prompt_embeddings", True):
        return int(c["caption_channels"]), int(c["caption_channels"])
    return int(c["cross_attention_dim"]), int(c["audio_cross_attention_dim"])


def split_text_context(
    text: torch.Tensor, video_width: int, audio_width: int, mode: LtxMode
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Split a cached text embedding `[B, L, D]` into (video_ctx, audio_ctx) by the model's widths.

    AV layout: `D = video_width + audio_width` (`[video_ctx, audio_ctx]`). Video-only layout:
    `D = video_width`, accepted in `video` mode only (audio_ctx is then None).
    """
    width = text.shape[-1]
    if width == video_width + audio_width:
        return text[..., :video_width], text[..., video_width:]
    if width == video_width and mode is LtxMode.VIDEO:
        return text, None
    if width == video_width:
        raise ValueError(
            f"text embeddings are {width} wide: the video-only layout, but --ltx_mode {mode.value} needs the "
            f"audio context too ({video_width}+{audio_width}={video_width + audio_width} wide). Re-cache them "
            "with ltxv2-cache-text-encoder-outputs --ltxv2_audio_video."
        )
    raise ValueError(
        f"text embeddings are {width} wide, which fits neither layout of this model: video-only "
        f"{video_width} (cached without --ltxv2_audio_video) nor audio+video {video_width + audio_width} "
        f"(cached with --ltxv2_audio_video). They were cached with another text backend or model: re-run "
        "ltxv2-cache-text-encoder-outputs with --text_encoder_backend gemma and the connectors of this "
        "checkpoint (LTX-2 does not take T5 embeddings)."
    )


def _clean_transformer_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def vae_statistics(vae: torch.nn.Module | None = None, audio_vae: torch.nn.Module | None = None) -> dict[str, Any]:
    """The VAEs' normalization statistics as adapter config values (`latents_mean`, `audio_latents_std`, ...);
    a VAE left out contributes nothing."""
    out: dict[str, Any] = {}
    if vae is not None:
        out["latents_mean"] = [float(v) for v in vae.latents_mean.detach().float().cpu()]
        out["latents_std"] = [float(v) for v in vae.latents_std.detach().float().cpu()]
        out["scaling_factor"] = float(getattr(vae.config, "scaling_factor", 1.0))
    if audio_vae is not None:
        channels = int(audio_vae.config.latent_channels)
        mel_bins = int(audio_vae.config.mel_bins) // int(getattr(audio_vae, "mel_compression_ratio", 4))
        out["audio_latent_channels"], out["audio_latent_mel_bins"] = channels, mel_bins
        for key in ("latents_mean", "latents_std"):
            stats = packed_audio_stats(getattr(audio_vae, key), channels, mel_bins, key)
            out[f"audio_{key}"] = [float(v) for v in stats]
    return out


def _unless_normalized(batch: Mapping[str, Any], flag: str, raw: torch.Tensor,
                       normalized: torch.Tensor) -> torch.Tensor:
    """`normalized`, except for the items `batch[flag]` marks as cached already normalized (musubi's `ltx2`
    caches hold the official encoders' normalized output)."""
    marks = batch.get(flag)
    if marks is None:
        return normalized
    marks = torch.as_tensor(marks, dtype=torch.bool).to(raw.device).view(-1, *([1] * (raw.dim() - 1)))
    return torch.where(marks, raw, normalized)


class LTXModelAdapterBase(ModelMixin, ConfigMixin):
    """Shared implementation; use `LTXV2ModelAdapter`, `LTXAVModelAdapter` or `LTXAudioModelAdapter`.

    Config: `transformer_config` (the `LTX2VideoTransformer3DModel` constructor kwargs), video VAE
    `latents_mean` / `latents_std` / `scaling_factor`, audio VAE `audio_latents_mean` / `audio_latents_std`
    (one per packed feature), `audio_latent_channels` / `audio_latent_mel_bins` (`[B, 8, T, 16]` for
    LTX-2), `av_timestep_rule` (`"current"`: the official model today; `"legacy"`: ltx-core 1.0.0, whose
    cross-modal timesteps `use_cross_timestep` picks, True being 1.0.0's).
    """

    mode: LtxMode = LtxMode.AV
    _supports_gradient_checkpointing = True
    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        transformer_config: dict[str, Any] | None = None,
        latents_mean: list[float] | None = None,
        latents_std: list[float] | None = None,
        scaling_factor: float = 1.0,
        audio_latents_mean: list[float] | None = None,
        audio_latents_std: list[float] | None = None,
        audio_latent_channels: int = 8,
        audio_latent_mel_bins: int = 16,
        use_cross_timestep: bool = True,
        av_timestep_rule: str = DEFAULT_AV_TIMESTEP_RULE,
    ):
        super().__init__()
        check_av_timestep_rule(av_timestep_rule)
        self.transformer = LTX2VideoTransformer3DModel(**_clean_transformer_config(transformer_config or {}))
        self._check_config()
        self._cache: dict[tuple, Any] = {}  # per shape/device: coords, statistics, dtype

    # ---- construction ------------------------------------------------------------------------------

    @classmethod
    def from_components(
        cls,
        transformer: LTX2VideoTransformer3DModel,
        vae: torch.nn.Module | None = None,
        audio_vae: torch.nn.Module | None = None,
        use_cross_timestep: bool = True,
        av_timestep_rule: str = DEFAULT_AV_TIMESTEP_RULE,
    ) -> "LTXModelAdapterBase":
        """Wrap an existing transformer (no copy) and take the normalization statistics of the VAEs.

        A VAE left out means identity statistics for its modality.
        """
        if not isinstance(transformer, LTX2VideoTransformer3DModel):
            raise TypeError(f"transformer must be an LTX2VideoTransformer3DModel, got {type(transformer).__name__}")
        kwargs: dict[str, Any] = {"use_cross_timestep": use_cross_timestep, "av_timestep_rule": av_timestep_rule,
                                  **vae_statistics(vae, audio_vae)}
        # Build the shell on the meta device so no second transformer is allocated, then swap ours in.
        with torch.device("meta"):
            adapter = cls(transformer_config=_clean_transformer_config(transformer.config), **kwargs)
        adapter.transformer = transformer
        return adapter

    def _check_config(self) -> None:
        tc = self.transformer.config
        video_channels = self.video_latent_channels
        for key in ("latents_mean", "latents_std"):
            values = self.config[key]
            if values is not None and len(values) != video_channels:
                raise ValueError(
                    f"{key} has {len(values)} values; the transformer takes {video_channels} latent channels"
                )
        c, m = self.config.audio_latent_channels, self.config.audio_latent_mel_bins
        if c * m != tc.audio_in_channels:
            raise ValueError(
                f"audio latents of {c} channels x {m} mel bins pack to {c * m} features but the transformer "
                f"takes {tc.audio_in_channels}"
            )
        for key in ("audio_latents_mean", "audio_latents_std"):
            values = self.config[key]
            if values is not None and len(values) != c * m:
                raise ValueError(f"{key} has {len(values)} values; expected {c * m} (one per packed audio feature)")

    # ---- small facts -------------------------------------------------------------------------------

    @property
    def video_latent_channels(self) -> int:
        tc = self.transformer.config
        return tc.in_channels // (tc.patch_size * tc.patch_size * tc.patch_size_t)

    @property
    def trained_modalities(self) -> tuple[str, ...]:
        return tuple(m for m, on in (("video", self.mode.has_video), ("audio", self.mode.has_audio)) if on)

    def token_counts(self, batch: Mapping[str, Any]) -> dict[str, int]:
        """Tokens per item of each trained modality (what the scheduler's token-dependent shift needs)."""
        tc = self.transformer.config
        out = {}
        if self.mode.has_video:
            _, _, f, h, w = self._require(batch, "latents", 5).shape
            out["video"] = (f // tc.patch_size_t) * (h // tc.patch_size) * (w // tc.patch_size)
        if self.mode.has_audio:
            out["audio"] = int(self._require(batch, "audio_latents", 4).shape[2])
        return out

    def _dtype_device(self) -> tuple[torch.dtype, torch.device]:
        # `ModelMixin.dtype` walks every submodule (layerwise-casting hooks); do that once per placement.
        w = self.transformer.proj_in.weight
        ck = ("dtype_device", w.dtype, w.device)
        hit = self._cache.get(ck)
        if hit is None:
            hit = self._cache[ck] = (self.transformer.dtype, w.device)
        return hit

    def _stat(self, key: str, device: torch.device) -> torch.Tensor | None:
        values = self.config[key]
        if values is None:
            return None
        ck = (key, device)
        t = self._cache.get(ck)
        if t is None:
            t = self._cache[ck] = torch.tensor(values, dtype=torch.float32, device=device)
        return t

    def _base_video_coords(self, f: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        ck = ("video_coords", f, h, w, device)
        t = self._cache.get(ck)
        if t is None:
            # fps=1 leaves the time axis undivided (x / 1.0 is exact); the per-item fps is applied per step.
            t = self._cache[ck] = self.transformer.rope.prepare_video_coords(1, f, h, w, device, fps=1.0)
        return t

    def _audio_coords(self, n: int, batch_size: int, device: torch.device) -> torch.Tensor:
        ck = ("audio_coords", n, device)
        t = self._cache.get(ck)
        if t is None:
            t = self._cache[ck] = self.transformer.audio_rope.prepare_audio_coords(1, n, device)
        return t.expand(batch_size, -1, -1, -1)

    def _video_coords(self, f: int, h: int, w: int, fps: torch.Tensor | None, batch_size: int, device) -> torch.Tensor:
        coords = self._base_video_coords(f, h, w, device).repeat(batch_size, 1, 1, 1)
        if fps is None:
            coords[:, 0] = coords[:, 0] / DEFAULT_FPS
            return coords
        fps = torch.as_tensor(fps, dtype=torch.float32).flatten()
        if fps.numel() == 1:
            fps = fps.expand(batch_size)
        if fps.numel() != batch_size:
            raise ValueError(f"batch['fps'] must hold one frame rate per item ({batch_size}), got {fps.numel()}")
        values = fps.tolist() if fps.device.type == "cpu" else None  # no host sync for device tensors
        if values is not None and not all(v > 0 for v in values):
            raise ValueError(f"batch['fps'] must hold positive frame rates, got {values}")
        if values is not None and all(v == values[0] for v in values):
            # A Python-float divisor is what diffusers' and the official coordinate code use.
            coords[:, 0] = coords[:, 0] / values[0]
        else:
            coords[:, 0] = coords[:, 0] / fps.to(device).view(batch_size, 1, 1)
        return coords

    @staticmethod
    def _require(batch: Mapping[str, Any], key: str, ndim: int) -> torch.Tensor:
        value = batch.get(key)
        if value is None:
            raise KeyError(f"batch has no {key!r}; it is needed for this training mode")
        if value.ndim != ndim:
            raise ValueError(f"batch[{key!r}] must have {ndim} dims, got shape {tuple(value.shape)}")
        return value

    # ---- forward -----------------------------------------------------------------------------------

    def forward(
        self,
        batch: Mapping[str, Any],
        sigmas: Mapping[str, torch.Tensor],
        noise: Mapping[str, torch.Tensor] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> dict[str, ModalityOutput]:
        """Noise the batch's latents at `sigmas`, run the transformer, return per trained modality
        `ModalityOutput(pred, target, mask, sigmas)`; see the module docstring for shapes."""
        tr = self.transformer
        tc = tr.config
        mode = self.mode
        dtype, device = self._dtype_device()
        text = self._require(batch, "text", 3)
        text = text.to(device=device, dtype=dtype)
        batch_size = text.shape[0]
        noise = noise or {}
        scale = float(tc.timestep_scale_multiplier)

        video_w, audio_w = context_widths(tc)
        video_ctx, audio_ctx = split_text_context(text, video_w, audio_w, mode)
        text_mask = batch.get("text_mask")
        if text_mask is not None:
            text_mask = text_mask.to(device)

        outputs: dict[str, ModalityOutput] = {}
        prepared: dict[str, dict[str, Any]] = {}
        if mode.has_video:
            prepared["video"] = self._prepare_video(batch, sigmas, noise.get("video"), generator, batch_size, device)
        if mode.has_audio:
            prepared["audio"] = self._prepare_audio(batch, sigmas, noise.get("audio"), generator, batch_size, device)

        # The absent modality gets a 1-token dummy (zero-length audio crashes split RoPE); with
        # isolate_modalities it cannot reach the trained modality's output.
        if not mode.has_video:
            prepared["video"] = self._dummy(
                tc.in_channels,
                self._video_coords(1, 1, 1, None, batch_size, device),
                prepared["audio"]["sigma"],
                batch_size,
                device,
            )
        if not mode.has_audio:
            prepared["audio"] = self._dummy(
                tc.audio_in_channels,
                self._audio_coords(1, batch_size, device),
                prepared["video"]["sigma"],
                batch_size,
                device,
            )
        v, a = prepared["video"], prepared["audio"]

        video_ctx_mask = audio_ctx_mask = text_mask
        if not mode.has_video:
            # The video branch only has to run; a 1-token zero context keeps it cheap.
            video_ctx, video_ctx_mask = text.new_zeros(batch_size, 1, video_w), None
        if audio_ctx is None:
            audio_ctx, audio_ctx_mask = text.new_zeros(batch_size, 1, audio_w), None

        keyframes = self._keyframes_mask(batch, v, batch_size, device) if mode.has_video else None
        video_t, audio_t = v["tok_sigma"] * scale, a["tok_sigma"] * scale
        current = self.config.av_timestep_rule == "current"
        rule = (
            own_scale_shift_timesteps(tr, video_t, audio_t)
            if current and not mode.isolated
            else contextlib.nullcontext()
        )
        with rule:
            video_pred, audio_pred = tr(
                hidden_states=v["x_t"].to(dtype),
                audio_hidden_states=a["x_t"].to(dtype),
                encoder_hidden_states=video_ctx,
                audio_encoder_hidden_states=audio_ctx,
                timestep=video_t,
                audio_timestep=audio_t,
                sigma=v["sigma"] * scale,
                audio_sigma=a["sigma"] * scale,
                encoder_attention_mask=video_ctx_mask,
                audio_encoder_attention_mask=audio_ctx_mask,
                video_coords=v["coords"],
                audio_coords=a["coords"],
                isolate_modalities=mode.isolated,
                use_cross_timestep=current or bool(self.config.use_cross_timestep),
                video_keyframes_mask=keyframes,
                return_dict=False,
            )
        preds = {"video": video_pred, "audio": audio_pred}
        for name in self.trained_modalities:
            p = prepared[name]
            pred = preds[name][:, : p["target"].shape[1]]  # appended reference tokens are not predicted
            outputs[name] = ModalityOutput(pred=pred, target=p["target"], mask=p["mask"], sigmas=p["sigmas"])
        return outputs

    def _keyframes_mask(self, batch, video: dict[str, Any], batch_size: int, device) -> torch.Tensor | None:
        mask = batch.get("keyframes_mask")
        if mask is None:
            return None
        n = video["target"].shape[1]
        if tuple(mask.shape) != (batch_size, n):
            raise ValueError(
                f"batch['keyframes_mask'] has shape {tuple(mask.shape)}; expected [{batch_size}, {n}] "
                "(one flag per packed video token of the target)"
            )
        mask = mask.to(device=device)
        appended = video["x_t"].shape[1] - n
        if appended:  # reference tokens are never keyframes (official inference leaves them unmarked)
            mask = torch.cat([mask, mask.new_zeros(batch_size, appended)], dim=1)
        return mask.unsqueeze(-1)

    def _dummy(self, channels: int, coords: torch.Tensor, sigma: torch.Tensor, batch_size: int, device) -> dict:
        return {
            "x_t": torch.zeros(batch_size, 1, channels, device=device),
            "coords": coords,
            "sigma": sigma,
            "tok_sigma": sigma,
        }

    def _sigmas(self, sigmas: Mapping[str, torch.Tensor], name: str, batch_size: int, num_tokens: int, device):
        if name not in sigmas or sigmas[name] is None:
            raise KeyError(f"sigmas has no {name!r} entry; {self.mode.value} mode trains {name}")
        s = torch.as_tensor(sigmas[name])
        if not s.is_floating_point():
            raise TypeError(f"sigmas[{name!r}] must be floating point, got {s.dtype}")
        if s.ndim == 0:
            s = s.expand(batch_size)
        if s.ndim == 2 and s.shape[1] == 1:
            s = s[:, 0]
        if s.shape not in ((batch_size,), (batch_size, num_tokens)):
            raise ValueError(
                f"sigmas[{name!r}] has shape {tuple(s.shape)}; expected [{batch_size}] or [{batch_size}, {num_tokens}]"
            )
        # Checked only where it is free: on an accelerator it would cost a host sync every step.
        if s.device.type == "cpu" and bool(((s < 0) | (s > 1)).any()):
            raise ValueError(f"sigmas[{name!r}] must lie in [0, 1]")
        s = s.to(device=device, dtype=torch.float32)
        per_token = s.ndim == 2
        per_sample = s.amax(dim=1) if per_token else s
        return s, per_sample, per_token

    def _noise(self, given, x0: torch.Tensor, unpacked_shape, pack, generator, name: str) -> torch.Tensor:
        if given is None:
            return randn_tensor(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
        if tuple(given.shape) == tuple(unpacked_shape):
            given = pack(given)
        if tuple(given.shape) != tuple(x0.shape):
            raise ValueError(
                f"noise[{name!r}] has shape {tuple(given.shape)}; expected packed {tuple(x0.shape)} "
                f"or unpacked {tuple(unpacked_shape)}"
            )
        return given.to(device=x0.device, dtype=torch.float32)

    def _normalized_video(self, latents: torch.Tensor, device, batch: Mapping[str, Any], flag: str) -> torch.Tensor:
        """VAE means `[B,C,F,H,W]` -> the model's normalized float32 latents (items `batch[flag]` marks as cached
        already normalized pass unchanged)."""
        x0 = latents.to(device=device, dtype=torch.float32)
        mean, std = self._stat("latents_mean", device), self._stat("latents_std", device)
        if mean is not None or std is not None or self.config.scaling_factor != 1.0:
            mean = mean if mean is not None else torch.zeros(self.video_latent_channels, device=device)
            std = std if std is not None else torch.ones(self.video_latent_channels, device=device)
            x0 = _unless_normalized(batch, flag, x0, normalize_video_latents(x0, mean, std, self.config.scaling_factor))
        return x0

    def _prepare_video(self, batch, sigmas, given_noise, generator, batch_size, device) -> dict[str, Any]:
        tc = self.transformer.config
        latents = self._require(batch, "latents", 5)
        if latents.shape[0] != batch_size or latents.shape[1] != self.video_latent_channels:
            raise ValueError(
                f"batch['latents'] has shape {tuple(latents.shape)}; expected [{batch_size}, "
                f"{self.video_latent_channels}, F, H, W] (batch size from batch['text'])"
            )
        p, pt = tc.patch_size, tc.patch_size_t
        x0 = self._normalized_video(latents, device, batch, "latents_normalized")
        _, _, f, h, w = x0.shape
        x0 = pack_video_latents(x0, p, pt)
        n = x0.shape[1]
        s, per_sample, per_token = self._sigmas(sigmas, "video", batch_size, n, device)
        eps = self._noise(given_noise, x0, latents.shape, lambda t: pack_video_latents(t, p, pt), generator, "video")
        mask = s > 0 if per_token else torch.ones(batch_size, n, dtype=torch.bool, device=device)
        out = _noised(x0, eps, s, per_sample, mask,
                      self._video_coords(f // pt, h // p, w // p, batch.get("fps"), batch_size, device))
        reference = batch.get("reference_latents")
        if reference is not None:
            self._append_video_reference(out, batch, reference, (f // pt, h // p, w // p), batch_size, device)
        return out

    def _append_video_reference(self, out: dict, batch: Mapping[str, Any], reference: torch.Tensor,
                                grid: tuple[int, int, int], batch_size: int, device) -> None:
        """Append clean reference tokens (timestep 0) after the target's, at the official reference positions."""
        tc = self.transformer.config
        p, pt = tc.patch_size, tc.patch_size_t
        if reference.ndim != 5 or reference.shape[0] != batch_size or reference.shape[1] != self.video_latent_channels:
            raise ValueError(f"batch['reference_latents'] has shape {tuple(reference.shape)}; expected [{batch_size}, "
                             f"{self.video_latent_channels}, F, H, W]")
        r0 = self._normalized_video(reference, device, batch, "reference_latents_normalized")
        rgrid = (r0.shape[2] // pt, r0.shape[3] // p, r0.shape[4] // p)
        spatial, temporal = infer_reference_scales(grid, rgrid)
        tokens = pack_video_latents(r0, p, pt)
        base = self._base_video_coords(*rgrid, device).repeat(batch_size, 1, 1, 1)
        fps = batch.get("fps")
        fps_value = DEFAULT_FPS if fps is None else torch.as_tensor(fps, dtype=torch.float32).flatten()
        if isinstance(fps_value, torch.Tensor) and fps_value.device.type == "cpu":
            if bool((fps_value == fps_value[0]).all()):
                fps_value = float(fps_value[0])  # a Python-float divisor, as the target's positions and official code
        coords = reference_video_coords(base, fps_value, out["coords"][:, 0, 0:1, 1:2], spatial, temporal)
        _append_clean(out, tokens, coords)

    def _prepare_audio(self, batch, sigmas, given_noise, generator, batch_size, device) -> dict[str, Any]:
        c, m = self.config.audio_latent_channels, self.config.audio_latent_mel_bins
        latents = self._require(batch, "audio_latents", 4)
        if latents.shape[0] != batch_size or latents.shape[1] != c or latents.shape[3] != m:
            raise ValueError(
                f"batch['audio_latents'] has shape {tuple(latents.shape)}; expected [{batch_size}, {c}, T, {m}]"
            )
        x0 = pack_audio_latents(latents.to(device=device, dtype=torch.float32))
        mean, std = self._stat("audio_latents_mean", device), self._stat("audio_latents_std", device)
        if mean is not None or std is not None:
            mean = mean if mean is not None else torch.zeros(c * m, device=device)
            std = std if std is not None else torch.ones(c * m, device=device)
            x0 = _unless_normalized(batch, "audio_latents_normalized", x0, normalize_audio_tokens(x0, mean, std))
        n = x0.shape[1]
        s, per_sample, per_token = self._sigmas(sigmas, "audio", batch_size, n, device)
        eps = self._noise(given_noise, x0, latents.shape, pack_audio_latents, generator, "audio")
        lengths = batch.get("audio_lengths")
        if lengths is None:
            mask = torch.ones(batch_size, n, dtype=torch.bool, device=device)
        else:
            lengths = torch.as_tensor(lengths, device=device).reshape(-1)
            if lengths.numel() != batch_size:
                raise ValueError(f"batch['audio_lengths'] must hold {batch_size} lengths, got {lengths.numel()}")
            mask = torch.arange(n, device=device).unsqueeze(0) < lengths.unsqueeze(1)
        if per_token:
            mask = mask & (s > 0)
        out = _noised(x0, eps, s, per_sample, mask, self._audio_coords(n, batch_size, device))
        reference = batch.get("reference_audio_latents")
        if reference is not None:
            if reference.ndim != 4 or tuple(reference.shape[:2]) != (batch_size, c) or reference.shape[3] != m:
                raise ValueError(f"batch['reference_audio_latents'] has shape {tuple(reference.shape)}; expected "
                                 f"[{batch_size}, {c}, T, {m}]")
            r0 = pack_audio_latents(reference.to(device=device, dtype=torch.float32))
            if mean is not None or std is not None:
                r0 = _unless_normalized(batch, "reference_audio_latents_normalized", r0,
                                        normalize_audio_tokens(r0, mean, std))
            coords = reference_audio_coords(self._audio_coords(r0.shape[1], batch_size, device),
                                            negative=bool(batch.get("reference_audio_negative_positions", False)))
            _append_clean(out, r0, coords)
        return out


def _noised(x0: torch.Tensor, eps: torch.Tensor, sigmas: torch.Tensor, per_sample: torch.Tensor,
            mask: torch.Tensor, coords: torch.Tensor) -> dict[str, Any]:
    """One modality's model inputs and flow-matching target at per-token `sigmas`."""
    return {
        "x_t": add_noise(x0, eps, sigmas),
        "target": velocity(x0, eps),
        "mask": mask,
        "sigmas": sigmas,
        "sigma": per_sample,
        "tok_sigma": sigmas,
        "coords": coords,
    }


def _append_clean(out: dict[str, Any], tokens: torch.Tensor, coords: torch.Tensor) -> None:
    """Append clean conditioning tokens to a prepared modality: model input and positions grow; target,
    loss mask and reported sigmas stay the target's."""
    out["x_t"] = torch.cat([out["x_t"], tokens.to(out["x_t"].dtype)], dim=1)
    tok = out["tok_sigma"]
    if tok.ndim == 1:
        tok = tok.unsqueeze(1).expand(-1, out["x_t"].shape[1] - tokens.shape[1])
    out["tok_sigma"] = torch.cat([tok, tok.new_zeros(tok.shape[0], tokens.shape[1])], dim=1)
    out["coords"] = torch.cat([out["coords"], coords.to(out["coords"].dtype)], dim=2)


@diffusers_component
class LTXV2ModelAdapter(LTXModelAdapterBase):
    """Video-only (LTXV) training: audio runs as an isolated 1-token dummy."""

    mode = LtxMode.VIDEO


@diffusers_component
class LTXAVModelAdapter(LTXModelAdapterBase):
    """Joint audio+video (LTXAV) training with independent video and audio sigmas."""

    mode = LtxMode.AV


@diffusers_component
class LTXAudioModelAdapter(LTXModelAdapterBase):
    """Audio-only training: video runs as an isolated 1-token dummy."""

    mode = LtxMode.AUDIO


ADAPTER_CLASSES: dict[LtxMode, type[LTXModelAdapterBase]] = {
    LtxMode.VIDEO: LTXV2ModelAdapter,
    LtxMode.AV: LTXAVModelAdapter,
    LtxMode.AUDIO: LTXAudioModelAdapter,
}


def adapter_class_for_mode(mode: LtxMode | str) -> type[LTXModelAdapterBase]:
    """The adapter class that trains `mode`."""
    return ADAPTER_CLASSES[LtxMode(str(mode))]
