"""Preview sampling during training with the stock diffusers `LTX2Pipeline`.

The pipeline runs the training transformer (LoRA active) with `LTXV2FlowMatchScheduler`'s inference
configuration, so previews are what users get at inference. Prompts are encoded once (or read from
the text cache) into the connector outputs the transformer reads; the pipeline's `connectors` slot
gets `CachedContextConnectors`, which hands those cached contexts through unchanged (the stock
connectors would expect raw Gemma states). `av` previews are mp4 with the audio track, `video`
previews mp4, `audio` previews wav.

Previews fit the training's memory: the VAEs and vocoder wait in host memory between previews
(`preview_parts_on`), and the video VAE decodes in tiles (`bounded_decoding`), as the official pipelines do.
"""

from __future__ import annotations

import contextlib
import wave
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ltxv2_diffusers import diffusers_component
from ltxv2_diffusers.data.prompts import PreviewPrompt
from ltxv2_diffusers.modes import LtxMode


@diffusers_component
class CachedContextConnectors(ModelMixin, ConfigMixin):
    """Stands in for `LTX2TextConnectors` in the pipeline when prompts are already connector outputs.

    `prompt_embeds` is the cached text `[B,L,D]`: `[video_ctx, audio_ctx]` (av layout) or the video
    context alone (video layout; the audio context is then zeros, and the audio output is ignored).
    """

    @register_to_config
    def __init__(self, video_width: int, audio_width: int):
        super().__init__()
        self.video_width = video_width
        self.audio_width = audio_width
        # A parameter-less module has no device (the pipeline asks every component for one) and saves no
        # weights file (diffusers' from_pretrained needs one): one persistent scalar gives it both.
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=True)

    def forward(self, text: torch.Tensor, attention_mask: torch.Tensor, padding_side: str = "left", **_):
        width = text.shape[-1]
        if width == self.video_width + self.audio_width:
            video, audio = text[..., : self.video_width], text[..., self.video_width:]
        elif width == self.video_width:
            video = text
            audio = text.new_zeros(*text.shape[:-1], self.audio_width)
        else:
            raise ValueError(f"cached prompt width {width} fits neither the video context ({self.video_width}) "
                             f"nor [video, audio] ({self.video_width + self.audio_width})")
        mask = attention_mask.to(torch.int64)
        return video * mask.unsqueeze(-1).to(video.dtype), audio, mask


def write_wav(path: str | Path, audio: torch.Tensor, sample_rate: int) -> None:
    """16-bit PCM wav from a `[C,S]` (or `[S]`) float waveform in [-1, 1]."""
    samples = audio.detach().float().cpu()
    if samples.ndim == 1:
        samples = samples.unsqueeze(0)
    pcm = (samples.clamp(-1, 1) * 32767.0).round().to(torch.int16).T.contiguous().numpy()
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(pcm.shape[1])
        handle.setsampwidth(2)
        handle.setframerate(int(sample_rate))
        handle.writeframes(pcm.tobytes())


def fit_audio_stats(audio_vae, audio_in_channels: int) -> None:
    """Give the audio VAE one statistic per packed audio feature, as `LTX2Pipeline` denormalizes with.

    diffusers sizes these buffers by `base_channels`; small test VAEs then hold one value per latent
    channel. They are spread over the mel bins exactly as the training adapter does
    (`models.normalization.packed_audio_stats`), so previews undo the normalization training applied.
    """
    from ltxv2_diffusers.models.normalization import packed_audio_stats

    channels = int(audio_vae.config.latent_channels)
    if audio_vae.latents_mean.numel() == audio_in_channels:
        return
    mel_bins = audio_in_channels // channels
    for name in ("latents_mean", "latents_std"):
        buf = getattr(audio_vae, name)
        fitted = packed_audio_stats(buf, channels, mel_bins, name).to(buf.device, buf.dtype)
        audio_vae.register_buffer(name, fitted, persistent=True)


def bounded_decoding(vae) -> None:
    """Decode in tiles (diffusers' own tiling: at most 512x512 pixels and 16 frames a tile, overlaps blended),
    so a preview's decode needs about the same memory whatever its size: untiled, the last decoder stage of a
    768x512x121 clip alone holds 12 GiB."""
    if hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if hasattr(vae, "use_framewise_decoding"):
        vae.use_framewise_decoding = True


@contextlib.contextmanager
def preview_parts_on(parts: Mapping[str, torch.nn.Module], device: torch.device | str) -> Iterator[None]:
    """The preview parts on `device` while previews render, in host memory again afterwards (also when a
    preview fails): training never holds them on the GPU (2.5 GiB for LTX-2's VAEs and vocoder), and the
    memory plan need not count them."""
    try:
        for module in parts.values():
            module.to(device)
        yield
    finally:
        for module in parts.values():
            module.to("cpu")


def build_preview_pipeline(transformer, vae, audio_vae, vocoder, scheduler=None, pipeline_class=None):
    """The stock `LTX2Pipeline` (or `pipeline_class`: `LTX2ImageToVideoPipeline`, `LTX2ConditionPipeline`,
    `LTX2InContextPipeline`, which take the same components) around the training transformer, with no text
    encoder."""
    from diffusers import LTX2Pipeline

    from ltxv2_diffusers.models.adapter import context_widths

    if scheduler is None:
        from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

        scheduler = LTXV2FlowMatchScheduler()
    video_width, audio_width = context_widths(transformer.config)
    fit_audio_stats(audio_vae, int(transformer.config.audio_in_channels))
    bounded_decoding(vae)
    return (pipeline_class or LTX2Pipeline)(
        scheduler=scheduler, vae=vae, audio_vae=audio_vae, text_encoder=None, tokenizer=None,
        connectors=CachedContextConnectors(video_width, audio_width), transformer=transformer, vocoder=vocoder,
    )


def load_frames(path: str, width: int, height: int, num_frames: int) -> list:
    """Up to `num_frames` frames of an image or video as PIL images of `width` x `height` (center-cropped)."""
    from PIL import Image

    from ltxv2_diffusers.data.media import decode_video_frames, probe_video

    count = max(1, min(num_frames, probe_video(path).num_frames))
    frames = decode_video_frames(path, 0, count, (width, height))
    pixels = ((frames.permute(0, 2, 3, 1) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    return [Image.fromarray(f) for f in pixels]


def preview_pipeline_class(prompt: PreviewPrompt):
    """The stock pipeline a prompt line needs: `--v` -> `LTX2InContextPipeline`, `--i` ->
    `LTX2ImageToVideoPipeline`, else `LTX2Pipeline`."""
    import diffusers

    if prompt.reference is not None:
        return diffusers.LTX2InContextPipeline
    if prompt.image is not None:
        return diffusers.LTX2ImageToVideoPipeline
    return diffusers.LTX2Pipeline


def conditioning_inputs(prompt: PreviewPrompt, reference_downscale: int = 1) -> dict[str, Any]:
    """The pipeline arguments of a prompt's `--i` / `--v` (see `preview_pipeline_class`)."""
    if prompt.reference is not None:
        from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition
        from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2ReferenceCondition

        frames = load_frames(prompt.reference, prompt.width, prompt.height, prompt.num_frames)
        out: dict[str, Any] = {"reference_conditions": [LTX2ReferenceCondition(frames=frames)],
                               "reference_downscale_factor": int(reference_downscale)}
        if prompt.image is not None:
            image = load_frames(prompt.image, prompt.width, prompt.height, 1)[0]
            out["conditions"] = [LTX2VideoCondition(frames=image, index=0)]
        return out
    if prompt.image is not None:
        return {"image": load_frames(prompt.image, prompt.width, prompt.height, 1)[0]}
    return {}


def beside_reference(frames: np.ndarray, reference: str) -> np.ndarray:
    """`[F,H,W,3]` output frames with the reference (resized, its last frame held) on their left."""
    count, height, width = frames.shape[:3]
    ref = load_frames(reference, width, height, count)
    ref = np.stack([np.asarray(ref[min(i, len(ref) - 1)], dtype=np.float32) / 255.0 for i in range(count)])
    return np.concatenate([ref.astype(frames.dtype), frames], axis=2)


@torch.no_grad()
def render_preview(pipeline, prompt: PreviewPrompt, embeds: tuple[torch.Tensor, torch.Tensor],
                   negative: tuple[torch.Tensor, torch.Tensor] | None, mode: LtxMode, out_stem: Path,
                   default_steps: int = 20, default_guidance: float = 1.0, seed: int = 0,
                   output_type: str = "np", reference_downscale: int = 1, include_reference: bool = False) -> Path:
    """Render one prompt and write `out_stem.mp4` (video/av) or `out_stem.wav` (audio); returns the file.

    A prompt with `--i` / `--v` needs the pipeline `preview_pipeline_class(prompt)` names; with
    `include_reference` the `--v` reference is shown left of the output."""
    if mode is LtxMode.AUDIO and (prompt.image or prompt.reference):
        raise ValueError(f"preview {prompt.index}: --i / --v condition video; --ltx_mode audio renders none")
    from diffusers.utils import encode_video

    # LTX2Pipeline feeds the transformer in the prompt embeddings' dtype: match the transformer's
    # (bf16 on the GPU fast path) whatever dtype the text cache holds.
    device, dtype = pipeline.transformer.device, pipeline.transformer.dtype
    guidance = default_guidance if prompt.guidance_scale is None else prompt.guidance_scale
    text, mask = embeds
    kwargs: dict[str, Any] = dict(
        prompt_embeds=text.to(device, dtype), prompt_attention_mask=mask.to(device),
        width=prompt.width, height=prompt.height, num_frames=prompt.num_frames, frame_rate=prompt.frame_rate,
        num_inference_steps=prompt.steps or default_steps, guidance_scale=guidance,
        audio_guidance_scale=None, stg_scale=0.0, audio_stg_scale=None, modality_scale=1.0,
        audio_modality_scale=None, guidance_rescale=0.0, audio_guidance_rescale=None,
        spatio_temporal_guidance_blocks=None,
        generator=torch.Generator("cpu").manual_seed(prompt.seed if prompt.seed is not None else seed),
        output_type=output_type, return_dict=False, max_sequence_length=text.shape[1],
        **conditioning_inputs(prompt, reference_downscale),
    )
    if guidance > 1.0:
        if negative is None:
            raise ValueError(f"preview {prompt.index}: guidance {guidance} needs a negative prompt embedding")
        kwargs.update(negative_prompt_embeds=negative[0].to(device, dtype),
                      negative_prompt_attention_mask=negative[1].to(device))
    video, audio = pipeline(**kwargs)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    sample_rate = int(pipeline.vocoder.config.output_sampling_rate)
    if mode is LtxMode.AUDIO:
        path = out_stem.with_suffix(".wav")
        write_wav(path, audio[0], sample_rate)
        return path
    path = out_stem.with_suffix(".mp4")
    frames = np.asarray(video[0])
    if include_reference and prompt.reference is not None:
        frames = beside_reference(frames, prompt.reference)
    track = audio[0].float().cpu() if mode is LtxMode.AV else None
    encode_video(frames, fps=int(round(prompt.frame_rate)), output_path=str(path), audio=track,
                 audio_sample_rate=sample_rate if track is not None else None)
    return path


class PromptCache:
    """Text contexts of the preview prompts, encoded once; the text encoder is freed afterwards."""

    def __init__(self, entries: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.entries = entries

    def __getitem__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.entries[prompt]

    @classmethod
    def encode(cls, prompts: list[str], args, device: torch.device | str = "cpu") -> "PromptCache":
        """Use the text cache written by `ltxv2-cache-text-encoder-outputs --sample_prompts` when it has every
        prompt, else encode with `--text_encoder` (error naming both ways when neither is available)."""
        unique = list(dict.fromkeys(prompts))
        cached = read_cached_prompts(unique, args)
        missing = [p for p in unique if p not in cached]
        if not missing:
            return cls({p: cached[p] for p in unique})
        if not args.text_encoder:
            shown = ", ".join(repr(p[:60]) for p in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise ValueError(
                f"previews need text embeddings of {shown} (an empty string is the default negative prompt "
                "when guidance > 1): run ltxv2-cache-text-encoder-outputs with "
                f"--sample_prompts {args.sample_prompts} (give every line an --n negative prompt), or pass "
                "--text_encoder to encode them at start")
        from ltxv2_diffusers.text.base import get_text_backend

        factory = get_text_backend(args.text_encoder_backend)
        backend = factory(text_encoder=args.text_encoder, tokenizer=args.tokenizer, max_length=args.max_length,
                          connectors=args.ltxv2_model, audio_video=args.mode is not LtxMode.VIDEO,
                          device=device, dtype=None)
        try:
            entries = dict(cached)
            for prompt in missing:
                text, mask = backend.encode([prompt])
                entries[prompt] = (text.float().cpu(), mask.cpu())
        finally:
            backend.free()
        return cls(entries)


def read_cached_prompts(prompts: list[str], args) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Those of `prompts` found in the sample-prompt text caches of the dataset's cache directories."""
    from ltxv2_diffusers.data.config import load_dataset_config
    from ltxv2_diffusers.data.jobs import load_sample_prompt_embeddings

    found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for entry in load_dataset_config(args.dataset_config, require_media=False).datasets:
        try:
            found.update(load_sample_prompt_embeddings(entry.cache_directory))
        except (FileNotFoundError, KeyError, ValueError):
            continue
    out = {}
    for p in prompts:
        if p in found:
            text, mask = found[p]
            out[p] = (torch.as_tensor(text).float().reshape(1, *text.shape[-2:]),
                      torch.as_tensor(mask).bool().reshape(1, -1))
    return out


def preview_name(step: int, prompt: PreviewPrompt) -> str:
    return f"step{step:08d}_{prompt.index:02d}"

