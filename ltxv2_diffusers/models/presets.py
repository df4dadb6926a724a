"""Named model configurations and `build_components`, the only code path that makes models.

Each preset is a dict of diffusers constructor kwargs per component. `tiny` keeps the real
structure (latent channels, compression ratios, split RoPE, equal video/audio head counts) with
tiny widths so a training step runs on CPU in milliseconds.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

_TINY_TRANSFORMER = dict(
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
)

_TINY_CONNECTORS = dict(
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
)

# The video VAE encoder's first width is the latent width (128) in the official architecture, and every
# downsample multiplies the width by an integer: (128,)*4 with no res blocks before the last stage keeps
# it official-compatible and cheap. The decoder's top width is 8 x its base width (here 4).
_TINY_VAE = dict(
    block_out_channels=(128, 128, 128, 128),
    layers_per_block=(0, 0, 0, 0, 1),
    decoder_block_out_channels=(8, 16, 32),
    decoder_layers_per_block=(1, 1, 1, 1),
    decoder_causal=False,
    spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)

_TINY_AUDIO_VAE = dict(base_channels=8, ch_mult=(1, 2, 4), num_res_blocks=1)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "transformer": dict(_TINY_TRANSFORMER),
        "connectors": dict(_TINY_CONNECTORS),
        "vae": dict(_TINY_VAE),
        "audio_vae": dict(_TINY_AUDIO_VAE),
        "vocoder": dict(
            in_channels=128,
            hidden_channels=64,
            upsample_kernel_sizes=[16, 15, 8, 4, 4],
            upsample_factors=[6, 5, 2, 2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
        ),
    },
    # LTX-2.3 layout at tiny widths: gated attention, prompt (cross-attention) AdaLN modulation, caption
    # projections moved into the connectors (one per modality, with bias), 2.3 VAE block pattern and the
    # vocoder with bandwidth extension.
    "tiny-2.3": {
        "transformer": dict(
            _TINY_TRANSFORMER,
            gated_attn=True,
            audio_gated_attn=True,
            cross_attn_mod=True,
            audio_cross_attn_mod=True,
            use_prompt_embeddings=False,
        ),
        "connectors": dict(
            _TINY_CONNECTORS,
            video_connector_attention_head_dim=16,
            audio_connector_attention_head_dim=8,
            video_gated_attn=True,
            audio_gated_attn=True,
            per_modality_projections=True,
            video_hidden_dim=32,
            audio_hidden_dim=16,
            proj_bias=True,
        ),
        "vae": dict(
            _TINY_VAE,
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            decoder_block_out_channels=(8, 16, 16, 32),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            decoder_spatio_temporal_scaling=(True, True, True, True),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),  # decoder order
            upsample_residual=(False, False, False, False),
            upsample_factor=(2, 2, 1, 2),
            decoder_spatial_padding_mode="zeros",
        ),
        "audio_vae": dict(_TINY_AUDIO_VAE),
        "vocoder": dict(
            in_channels=128,
            hidden_channels=64,  # halved by each of the 6 upsamples
            upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
            upsample_factors=[5, 2, 2, 2, 2, 2],
            resnet_kernel_sizes=[3],
            resnet_dilations=[[1, 3, 5]],
            bwe_hidden_channels=32,  # halved by each of the 5 upsamples
            bwe_resnet_kernel_sizes=[3],
            bwe_resnet_dilations=[[1, 3, 5]],
        ),
    },
    # The released LTX-2.0 19B (ltx-2-19b-*): 18.88 B transformer parameters.
    "ltx-2.0": {
        "transformer": dict(rope_type="split", rope_double_precision=True, cross_attn_timestep_scale_multiplier=1000),
        "connectors": dict(
            caption_channels=3840,
            text_proj_in_factor=49,
            video_connector_num_attention_heads=30,
            video_connector_attention_head_dim=128,
            video_connector_num_layers=2,
            audio_connector_num_attention_heads=30,
            audio_connector_attention_head_dim=128,
            audio_connector_num_layers=2,
            connector_rope_base_seq_len=4096,
            rope_type="split",
            rope_double_precision=True,
        ),
        "vae": dict(
            decoder_causal=False,
            encoder_spatial_padding_mode="zeros",
            decoder_spatial_padding_mode="reflect",
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        ),
        "audio_vae": dict(),
        "vocoder": dict(),
    },
    # The released LTX-2.3 22B (ltx-2.3-22b-*).
    "ltx-2.3": {
        "transformer": dict(
            rope_type="split",
            rope_double_precision=True,
            cross_attn_timestep_scale_multiplier=1000,
            gated_attn=True,
            audio_gated_attn=True,
            cross_attn_mod=True,
            audio_cross_attn_mod=True,
            use_prompt_embeddings=False,
        ),
        "connectors": dict(
            caption_channels=3840,
            text_proj_in_factor=49,
            video_connector_num_attention_heads=32,
            video_connector_attention_head_dim=128,
            video_connector_num_layers=8,
            audio_connector_num_attention_heads=32,
            audio_connector_attention_head_dim=64,
            audio_connector_num_layers=8,
            video_gated_attn=True,
            audio_gated_attn=True,
            connector_rope_base_seq_len=4096,
            rope_type="split",
            rope_double_precision=True,
            per_modality_projections=True,
            video_hidden_dim=4096,
            audio_hidden_dim=2048,
            proj_bias=True,
        ),
        "vae": dict(
            block_out_channels=(256, 512, 1024, 1024),
            layers_per_block=(4, 6, 4, 2, 2),
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            decoder_block_out_channels=(256, 512, 512, 1024),
            decoder_layers_per_block=(4, 6, 4, 2, 2),
            decoder_spatio_temporal_scaling=(True, True, True, True),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),  # decoder order
            upsample_residual=(False, False, False, False),
            upsample_factor=(2, 2, 1, 2),
            decoder_causal=False,
            encoder_spatial_padding_mode="zeros",
            decoder_spatial_padding_mode="zeros",
            spatial_compression_ratio=32,
            temporal_compression_ratio=8,
        ),
        "audio_vae": dict(),
        "vocoder": dict(),
    },
}

# LTX-2.5 (22B, 2026-08) is the 2.3 architecture with two transformer changes: no bias in the video
# feed-forward and a learned keyframe position embedding for tokens marked in `keyframes_mask`. Text
# connectors and the VAE encoder are the 2.3 ones (the Gemma 4 12B feature width equals Gemma 3 12B's).
_V25_TRANSFORMER = dict(ff_bias=False, use_keyframes_abs_pos_embedding=True)
for _base, _name in (("tiny-2.3", "tiny-2.5"), ("ltx-2.3", "ltx-2.5")):
    PRESETS[_name] = copy.deepcopy(PRESETS[_base])
    PRESETS[_name]["transformer"].update(_V25_TRANSFORMER)

# Components whose class differs from `component_classes()` in some presets (by diffusers class name).
PRESET_CLASSES: dict[str, dict[str, str]] = {
    "tiny-2.3": {"vocoder": "LTX2VocoderWithBWE"},
    "ltx-2.3": {"vocoder": "LTX2VocoderWithBWE"},
    "tiny-2.5": {"vocoder": "LTX2VocoderWithBWE"},
    "ltx-2.5": {"vocoder": "LTX2VocoderWithBWE"},
}


def preset_names() -> list[str]:
    return sorted(PRESETS)


def preset_config(preset: str) -> dict[str, dict[str, Any]]:
    """A deep copy of a preset's per-component constructor kwargs."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(preset_names())}")
    return copy.deepcopy(PRESETS[preset])


def component_classes(preset: str | None = None) -> dict[str, type]:
    """The diffusers class of each component name used in component dicts (for `preset`, if given)."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2 import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder, LTX2VocoderWithBWE

    classes = {
        "transformer": LTX2VideoTransformer3DModel,
        "connectors": LTX2TextConnectors,
        "vae": AutoencoderKLLTX2Video,
        "audio_vae": AutoencoderKLLTX2Audio,
        "vocoder": LTX2Vocoder,
    }
    by_name = {cls.__name__: cls for cls in (*classes.values(), LTX2VocoderWithBWE)}
    for component, class_name in PRESET_CLASSES.get(preset or "", {}).items():
        classes[component] = by_name[class_name]
    return classes


def build_components(
    preset: str = "tiny",
    seed: int = 0,
    components: tuple[str, ...] | None = None,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, torch.nn.Module]:
    """Build the diffusers components of `preset` with random weights (seeded per component).

    Returns a dict with `transformer`, `connectors`, `vae`, `audio_vae`, `vocoder` (or the subset
    named in `components`). Big presets can be built directly on `device` to avoid a CPU copy.
    `overrides` changes constructor kwargs per component, e.g. `{"transformer": {"num_layers": 8}}`.
    """
    config = preset_config(preset)
    for name, kwargs in (overrides or {}).items():
        config[name].update(kwargs)
    classes = component_classes(preset)
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
