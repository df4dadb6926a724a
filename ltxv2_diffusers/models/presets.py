"""Named model configurations and `build_components`, the only code path that makes models.

Each preset is a dict of diffusers constructor kwargs per component. `tiny` keeps the real
structure (latent channels, compression ratios, split RoPE, equal video/audio head counts) with
tiny widths so a training step runs on CPU in milliseconds.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "transformer": dict(
            in_channels=128,
            out_channels=128,
            num_attention_heads=2,
            attention_head_dim=16,
            cross_attention_dim=32,
            audio_in_channels=128,
            audio_out_channels=128,
            audio_num_attention_heads=2,
            audio_attention_head_dim=8,
            audio_cross_attention_dim=16,
            num_layers=2,
            caption_channels=24,
            rope_type="split",
        ),
        "connectors": dict(
            caption_channels=24,
            text_proj_in_factor=3,  # tiny Gemma-3: 2 layers + embeddings
            video_connector_num_attention_heads=2,
            video_connector_attention_head_dim=12,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=8,
            audio_connector_num_attention_heads=2,
            audio_connector_attention_head_dim=12,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=8,
            connector_rope_base_seq_len=32,
            rope_type="split",
        ),
        "vae": dict(
            block_out_channels=(8, 16, 32, 32),
            decoder_block_out_channels=(8, 16, 32),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1),
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        ),
        "audio_vae": dict(base_channels=8, ch_mult=(1, 2, 4), num_res_blocks=1),
        "vocoder": dict(
            in_channels=128,
            hidden_channels=64,
            upsample_kernel_sizes=[16, 15, 8, 4, 4],
            upsample_factors=[6, 5, 2, 2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
        ),
    },
    "ltx-2.0": {
        "transformer": dict(rope_type="split"),
        "connectors": dict(rope_type="split"),
        "vae": dict(spatial_compression_ratio=32, temporal_compression_ratio=8),
        "audio_vae": dict(),
        "vocoder": dict(),
    },
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_config(preset: str) -> dict[str, dict[str, Any]]:
    """A deep copy of a preset's per-component constructor kwargs."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[preset])


def component_classes() -> dict[str, type]:
    """The diffusers class of each component name used in component dicts."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder

    return {
        "transformer": LTX2VideoTransformer3DModel,
        "connectors": LTX2TextConnectors,
        "vae": AutoencoderKLLTX2Video,
        "audio_vae": AutoencoderKLLTX2Audio,
        "vocoder": LTX2Vocoder,
    }


def build_components(
    preset: str = "tiny",
    seed: int = 0,
    components: tuple[str, ...] | None = None,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> dict[str, torch.nn.Module]:
    """Build the diffusers components of `preset` with random weights (seeded per component).

    Returns a dict with `transformer`, `connectors`, `vae`, `audio_vae`, `vocoder` (or the subset
    named in `components`). Big presets can be built directly on `device` to avoid a CPU copy.
    """
    config = preset_config(preset)
    classes = component_classes()
    names = components or tuple(config)
    out: dict[str, torch.nn.Module] = {}
    for i, name in enumerate(names):
        if name not in config:
            raise ValueError(f"preset {preset!r} has no component {name!r}")
        torch.manual_seed(seed + i)
        with torch.device(device) if device is not None else _nullcontext():
            module = classes[name](**config[name])
        if torch_dtype is not None:
            module = module.to(torch_dtype)
        out[name] = module.eval()
    return out


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
