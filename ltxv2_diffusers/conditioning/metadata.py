"""LoRA file metadata of a conditioned run, with the key names the official trainer and musubi write,
so the official IC-LoRA pipelines, ComfyUI and musubi pick up the reference factors."""

from __future__ import annotations

import dataclasses
from typing import Any

from .policy import ConditioningOptions

# musubi's `ss_<strategy>_training` markers (ltx2_train_network.py).
_STRATEGY_MARKERS = {"v2v": "ss_v2v_training", "audio_ref_ic": "ss_audio_ref_ic_training",
                     "av_ic": "ss_av_ic_training", "video_ref_only_av": "ss_video_ref_only_av_training"}


def conditioning_metadata(args: Any) -> dict[str, object]:
    """Metadata entries for a LoRA trained with `args` (empty for plain text-to-video/audio runs).

    IC-LoRAs with a video reference always carry `reference_downscale_factor` (the official trainer
    writes it even at 1; its pipelines default to 1 without it); factors other than 1 are written under
    the official names and musubi's `ss_` names; the temporal factor as `reference_temporal_scale_factor`.
    """
    options = ConditioningOptions.from_args(args)
    mode = getattr(args, "mode", None)
    if mode is not None and not mode.has_video:  # the first-frame default of IC-LoRAs conditions no audio
        options = dataclasses.replace(options, first_frame_p=0.0)
    md: dict[str, object] = {}
    strategy = options.ic_lora_strategy
    down = int(getattr(args, "reference_downscale", None) or 1)
    temporal = int(getattr(args, "reference_temporal_scale", None) or 1)
    if strategy:
        md["ss_ic_lora_strategy"] = strategy
        md[_STRATEGY_MARKERS[strategy]] = True
    elif options.first_frame_p > 0:
        md["ss_i2v_training"] = True
    if options.uses_video_reference:
        md["reference_downscale_factor"] = down
        if down != 1:
            md["reference_spatial_scale_factor"] = down
            md["ss_reference_downscale_factor"] = down
        if temporal != 1:
            md["reference_temporal_scale_factor"] = temporal
            md["ss_reference_temporal_scale_factor"] = temporal
        if options.ref_probability < 1.0:
            md["ss_ic_lora_ref_probability"] = options.ref_probability
    if options.uses_audio_reference and options.audio_ref_negative_positions:
        md["ss_audio_ref_use_negative_positions"] = True
    if options.first_frame_p > 0:
        md["ss_ltx2_first_frame_conditioning_p"] = options.first_frame_p
    for name in ("extend_prefix_frames", "extend_suffix_frames", "audio_extend_prefix_frames",
                 "audio_extend_suffix_frames"):
        if getattr(options, name):
            md[f"ss_ltx2_{name}"] = getattr(options, name)
    return md
