"""Conditioned training: first-frame (I2V) and prefix/suffix (extension) tokens kept clean, IC-LoRA
video and audio references appended as clean tokens. `layout` holds the token layout and positions
(the official LTX-2 rules); `policy` decides per step which tokens are conditioning."""

from .layout import (
    AUDIO_REFERENCE_GAP_S,
    conditioned_sigmas,
    infer_reference_scales,
    reference_audio_coords,
    reference_video_coords,
    temporal_mask,
)
from .policy import (
    IC_LORA_FIRST_FRAME_P,
    IC_LORA_STRATEGIES,
    ConditioningOptions,
    apply_conditioning,
    audio_clean_mask,
    video_clean_mask,
)

__all__ = [
    "AUDIO_REFERENCE_GAP_S", "IC_LORA_FIRST_FRAME_P", "IC_LORA_STRATEGIES", "ConditioningOptions",
    "apply_conditioning", "audio_clean_mask", "conditioned_sigmas", "infer_reference_scales",
    "reference_audio_coords", "reference_video_coords", "temporal_mask", "video_clean_mask",
]
