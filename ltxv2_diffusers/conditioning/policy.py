"""Which tokens of a training batch are conditioning, drawn per step: first frame, prefix / suffix
extension, IC-LoRA references (with reference dropout), and kinds added by plugins.

`ConditioningOptions.from_args(args)` reads the flags once; `apply_conditioning(batch, sigmas, options,
generator)` returns the batch (references kept or dropped) and per-token sigmas with 0 on the clean
tokens, which is all the model adapter needs (docs/conditioning.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import torch

from .layout import conditioned_sigmas, infer_reference_scales, temporal_mask

# IC-LoRA strategies (musubi's names) -> (uses a video reference, uses an audio reference).
IC_LORA_STRATEGIES: dict[str, tuple[bool, bool]] = {
    "v2v": (True, False),
    "av_ic": (True, True),
    "video_ref_only_av": (True, False),
    "audio_ref_ic": (False, True),
}
# First-frame probability of an IC-LoRA run when none is given (the official trainer's and musubi's default).
IC_LORA_FIRST_FRAME_P = 0.1

Generators = torch.Generator | Sequence[torch.Generator] | None


@dataclasses.dataclass(frozen=True)
class ConditioningOptions:
    """The conditioning of a run, from its flags (see `from_args`)."""

    first_frame_p: float = 0.0
    extend_prefix_frames: int = 0
    extend_suffix_frames: int = 0
    extend_p: float = 1.0
    audio_extend_prefix_frames: int = 0
    audio_extend_suffix_frames: int = 0
    audio_extend_p: float = 1.0
    ic_lora_strategy: str | None = None
    ref_probability: float = 1.0
    audio_ref_negative_positions: bool = False
    reference_downscale: int = 1
    reference_temporal_scale: int = 1
    reference_frames: int | None = None

    @classmethod
    def from_args(cls, args: Any) -> "ConditioningOptions":
        """Options of a parsed training command (flags absent from `args` take their defaults)."""
        strategy = getattr(args, "ic_lora_strategy", None)
        strategy = None if strategy in (None, "none", "auto") else strategy
        first = getattr(args, "first_frame_conditioning_p", None)
        if first is None:
            first = IC_LORA_FIRST_FRAME_P if strategy else 0.0
        get = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)  # noqa: E731
        return cls(
            first_frame_p=float(first),
            extend_prefix_frames=int(get("extend_prefix_frames", 0)),
            extend_suffix_frames=int(get("extend_suffix_frames", 0)),
            extend_p=float(get("extend_p", 1.0)),
            audio_extend_prefix_frames=int(get("audio_extend_prefix_frames", 0)),
            audio_extend_suffix_frames=int(get("audio_extend_suffix_frames", 0)),
            audio_extend_p=float(get("audio_extend_p", 1.0)),
            ic_lora_strategy=strategy,
            ref_probability=float(get("ic_lora_ref_probability", 1.0)),
            audio_ref_negative_positions=bool(getattr(args, "audio_ref_use_negative_positions", False)),
            reference_downscale=int(get("reference_downscale", 1)),
            reference_temporal_scale=int(get("reference_temporal_scale", 1)),
            reference_frames=getattr(args, "reference_frames", None),
        )

    @property
    def uses_video_reference(self) -> bool:
        return bool(self.ic_lora_strategy) and IC_LORA_STRATEGIES[self.ic_lora_strategy][0]

    @property
    def uses_audio_reference(self) -> bool:
        return bool(self.ic_lora_strategy) and IC_LORA_STRATEGIES[self.ic_lora_strategy][1]

    @property
    def active(self) -> bool:
        return bool(self.first_frame_p > 0 or self.extend_prefix_frames or self.extend_suffix_frames
                    or self.audio_extend_prefix_frames or self.audio_extend_suffix_frames or self.ic_lora_strategy)


def _uniform(generator: Generators, batch_size: int) -> torch.Tensor:
    """`[B]` uniform draws on the CPU: one per item from its own generator, or B from the shared one."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(batch_size, generator=generator)
    return torch.cat([torch.rand(1, generator=g) for g in generator])


def _first_generator(generator: Generators) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    return generator[0] if len(generator) else None


def _to_device(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU mask to `device`; to a GPU through pinned memory, since a copy from pageable memory would make the
    host wait for all queued GPU work (the training step never waits for the GPU)."""
    if mask.device == torch.device(device) or torch.device(device).type != "cuda":
        return mask.to(device)
    return mask.pin_memory().to(device, non_blocking=True)


def _per_sample(mask: torch.Tensor, probability: float, generator: Generators) -> torch.Tensor:
    """`mask` kept for the items a Bernoulli(`probability`) draw selects (a draw is made even at p = 1,
    so the stream of draws does not depend on the probability)."""
    chosen = _uniform(generator, mask.shape[0]) < probability
    return mask & _to_device(chosen, mask.device).unsqueeze(1)


def video_clean_mask(latents: torch.Tensor, options: ConditioningOptions,
                     generator: Generators = None) -> torch.Tensor | None:
    """Bool `[B, F*H*W]` of target video tokens kept clean this step (first frame, extension), or None."""
    b, _, f, h, w = latents.shape
    clean = None
    if options.first_frame_p > 0 and f > 1:  # a one-frame item has nothing left to generate
        clean = _per_sample(temporal_mask(b, f, h * w, prefix=1), options.first_frame_p, generator)
    span = options.extend_prefix_frames + options.extend_suffix_frames
    if span and f > span:
        ext = temporal_mask(b, f, h * w, options.extend_prefix_frames, options.extend_suffix_frames)
        ext = _per_sample(ext, options.extend_p, generator)
        clean = ext if clean is None else clean | ext
    return clean


def audio_clean_mask(audio_latents: torch.Tensor, options: ConditioningOptions, generator: Generators = None,
                     lengths: torch.Tensor | None = None) -> torch.Tensor | None:
    """Bool `[B, Fa]` of target audio tokens kept clean this step (audio extension), or None. A suffix ends at
    each item's valid length (`audio_lengths`), not in its padding."""
    b, _, n, _ = audio_latents.shape
    prefix, suffix = options.audio_extend_prefix_frames, options.audio_extend_suffix_frames
    if not prefix + suffix:
        return None
    valid = torch.full((b, 1), n) if lengths is None else torch.as_tensor(lengths).reshape(b, 1)
    positions = torch.arange(n, device=valid.device).unsqueeze(0)
    ext = (positions < prefix) | ((positions >= valid - suffix) & (positions < valid))
    ext &= valid > prefix + suffix  # a span covering the whole clip would leave nothing to learn
    return _per_sample(ext, options.audio_extend_p, generator)


def check_reference_scales(target_grid: tuple[int, int, int], reference_grid: tuple[int, int, int],
                           options: ConditioningOptions) -> None:
    """Fail when cached references do not have the factors the run says (the LoRA metadata records the flags)."""
    spatial, temporal = infer_reference_scales(target_grid, reference_grid)
    if spatial != options.reference_downscale:
        raise ValueError(f"the cached references are 1/{spatial} of the target's size but --reference_downscale is "
                         f"{options.reference_downscale}: train with --reference_downscale {spatial} or re-cache them "
                         f"with ltxv2-cache-latents --reference_downscale {options.reference_downscale}")
    if temporal != options.reference_temporal_scale and reference_grid[0] > 1:
        raise ValueError(f"the cached references have 1/{temporal} of the target's frame rate but "
                         f"--reference_temporal_scale is {options.reference_temporal_scale}: train with "
                         f"--reference_temporal_scale {temporal} or re-cache them with that factor")
    if options.reference_frames is not None:
        # one latent frame for the first video frame, one per 8 after it, of the frames kept after subsampling
        latent = ((options.reference_frames - 1) // options.reference_temporal_scale) // 8 + 1
        if reference_grid[0] % latent:  # several reference streams are concatenated along time
            raise ValueError(f"the cached references have {reference_grid[0]} latent frames, which --reference_frames "
                             f"{options.reference_frames} (= {latent} latent frames per reference) does not give: "
                             "pass the value they were cached with")


def apply_conditioning(batch: Mapping[str, Any], sigmas: Mapping[str, torch.Tensor], options: ConditioningOptions,
                       generator: Generators = None, extra_masks: Mapping[str, torch.Tensor] | None = None):
    """`(batch, sigmas)` for this step: references the strategy does not use (or the reference dropout
    drops) removed from the batch; per-token sigmas with 0 on the tokens kept clean.

    `extra_masks` are more clean-token masks per modality (`[B, N]` bool, e.g. from plugins), OR-ed in.
    """
    batch = dict(batch)
    sigmas = dict(sigmas)
    keep_refs = True
    if options.uses_video_reference and options.ref_probability < 1.0:
        # Batch-wide: a reference changes the sequence length, so it is kept or dropped for all items.
        keep_refs = bool(torch.rand((), generator=_first_generator(generator)) < options.ref_probability)
    if not (options.uses_video_reference and keep_refs):
        batch.pop("reference_latents", None)
    if not (options.uses_audio_reference and (keep_refs or not options.uses_video_reference)):
        batch.pop("reference_audio_latents", None)
    reference = batch.get("reference_latents")
    if reference is not None and batch.get("latents") is not None:
        check_reference_scales(tuple(batch["latents"].shape[2:]), tuple(reference.shape[2:]), options)
    if options.uses_audio_reference and options.audio_ref_negative_positions:
        batch["reference_audio_negative_positions"] = True
    masks: dict[str, torch.Tensor | None] = {}
    if "video" in sigmas and batch.get("latents") is not None:
        masks["video"] = video_clean_mask(batch["latents"], options, generator)
    if "audio" in sigmas and batch.get("audio_latents") is not None:
        masks["audio"] = audio_clean_mask(batch["audio_latents"], options, generator, batch.get("audio_lengths"))
    for name, extra in (extra_masks or {}).items():
        if name in sigmas and extra is not None:
            extra = extra.to(torch.bool)
            own = masks.get(name)
            masks[name] = extra if own is None else _to_device(own, extra.device) | extra
    for name, clean in masks.items():
        if clean is not None:
            s = sigmas[name]
            sigmas[name] = conditioned_sigmas(s, _to_device(clean, s.device))
    return batch, sigmas
