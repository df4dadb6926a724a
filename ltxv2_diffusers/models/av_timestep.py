"""Which timesteps drive the audio<->video cross-attention modulation.

Official rule since ltx-core 1.1.4 (`current`, every model version): the a2v/v2a scale and shift of a
modality come from that modality's own (per-token) timesteps, the gate from the other modality's
sigma. ltx-core 1.0.0 (`legacy`) took both from the other modality's sigma. diffusers'
`LTX2VideoTransformer3DModel.forward` feeds one timestep to both (`use_cross_timestep` picks which),
so for `current` we run it with `use_cross_timestep=True` (the gates are then right) and swap the input
of the two scale/shift embedders for the modality's own timesteps. Only their inputs change: the
model, its weights and key names stay diffusers'.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # importable without torch: training/args.py reads the rule names
    import torch

AV_TIMESTEP_RULES = ("current", "legacy")
DEFAULT_AV_TIMESTEP_RULE = "current"


def check_av_timestep_rule(rule: str) -> str:
    """`rule` if it is one of `AV_TIMESTEP_RULES`, else a ValueError naming the flag."""
    if rule not in AV_TIMESTEP_RULES:
        raise ValueError(f"--av_timestep_rule {rule!r}: choose one of {', '.join(AV_TIMESTEP_RULES)}")
    return rule


def _replace_first_arg(value: torch.Tensor):
    def hook(_module, args):
        return (value, *args[1:])

    return hook


@contextlib.contextmanager
def own_scale_shift_timesteps(
    transformer: torch.nn.Module, video_timestep: torch.Tensor, audio_timestep: torch.Tensor
) -> Iterator[None]:
    """Within the block, the transformer's a2v/v2a scale/shift embedders read `video_timestep` /
    `audio_timestep` (`[B]` or per token `[B, N]`, already x timestep_scale_multiplier) instead of the
    timestep diffusers passes them. Call the transformer with `use_cross_timestep=True` inside it."""
    handles = [
        transformer.av_cross_attn_video_scale_shift.register_forward_pre_hook(
            _replace_first_arg(video_timestep.flatten())
        ),
        transformer.av_cross_attn_audio_scale_shift.register_forward_pre_hook(
            _replace_first_arg(audio_timestep.flatten())
        ),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
