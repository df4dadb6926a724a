"""Presets: structure of the tiny models, the real configs (checked against released checkpoints' metadata)."""

from __future__ import annotations

import functools

import pytest
import torch

from ltxv2_diffusers.models.official_config import diffusers_configs_from_official, official_config_from_diffusers
from ltxv2_diffusers.models.presets import build_components, preset_config, preset_names

# Verbatim facts from the released checkpoints' safetensors metadata ("config"): the LTX-2.0 19B
# transformer section and the LTX-2.3 22B transformer + vae sections.
LTX_2_0_TRANSFORMER = {
    "attention_head_dim": 128, "audio_attention_head_dim": 64, "audio_cross_attention_dim": 2048,
    "audio_num_attention_heads": 32, "audio_out_channels": 128, "audio_positional_embedding_max_pos": [20],
    "av_ca_timestep_scale_multiplier": 1000.0, "caption_channels": 3840, "connector_attention_head_dim": 128,
    "connector_num_attention_heads": 30, "connector_num_layers": 2, "connector_num_learnable_registers": 128,
    "connector_positional_embedding_max_pos": [4096], "cross_attention_dim": 4096, "frequencies_precision": "float64",
    "in_channels": 128, "norm_eps": 1e-06, "num_attention_heads": 32, "num_layers": 48, "out_channels": 128,
    "positional_embedding_max_pos": [20, 2048, 2048], "positional_embedding_theta": 10000.0, "rope_type": "split",
    "timestep_scale_multiplier": 1000,
}
LTX_2_3 = {
    "transformer": {
        **LTX_2_0_TRANSFORMER, "connector_num_attention_heads": 32, "connector_num_layers": 8,
        "apply_gated_attention": True, "connector_apply_gated_attention": True, "cross_attention_adaln": True,
        "caption_proj_before_connector": True, "caption_projection_first_linear": False,
        "caption_projection_second_linear": False, "caption_proj_input_norm": False,
        "audio_connector_attention_head_dim": 64, "audio_connector_num_attention_heads": 32,
    },
    "vae": {
        "dims": 3, "in_channels": 3, "out_channels": 3, "latent_channels": 128,
        "encoder_blocks": [["res_x", {"num_layers": 4}], ["compress_space_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 6}], ["compress_time_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 4}], ["compress_all_res", {"multiplier": 2}],
                           ["res_x", {"num_layers": 2}], ["compress_all_res", {"multiplier": 1}],
                           ["res_x", {"num_layers": 2}]],
        "decoder_blocks": [["res_x", {"num_layers": 4}], ["compress_space", {"multiplier": 2}],
                           ["res_x", {"num_layers": 6}], ["compress_time", {"multiplier": 2}],
                           ["res_x", {"num_layers": 4}], ["compress_all", {"multiplier": 1}],
                           ["res_x", {"num_layers": 2}], ["compress_all", {"multiplier": 2}],
                           ["res_x", {"num_layers": 2}]],
        "scaling_factor": 1.0, "norm_layer": "pixel_norm", "patch_size": 4, "latent_log_var": "uniform",
        "causal_decoder": False, "timestep_conditioning": False, "decoder_base_channels": 128,
        "spatial_padding_mode": "zeros",
    },
    "vocoder": {
        "vocoder": {"upsample_initial_channel": 1536, "resblock": "AMP1", "upsample_rates": [5, 2, 2, 2, 2, 2],
                    "resblock_kernel_sizes": [3, 7, 11], "upsample_kernel_sizes": [11, 4, 4, 4, 4, 4],
                    "resblock_dilation_sizes": [[1, 3, 5]] * 3, "stereo": True, "use_tanh_at_final": False,
                    "activation": "snakebeta", "use_bias_at_final": False},
        "bwe": {"upsample_initial_channel": 512, "resblock": "AMP1", "upsample_rates": [6, 5, 2, 2, 2],
                "resblock_kernel_sizes": [3, 7, 11], "upsample_kernel_sizes": [12, 11, 4, 4, 4],
                "resblock_dilation_sizes": [[1, 3, 5]] * 3, "stereo": True, "use_tanh_at_final": False,
                "activation": "snakebeta", "use_bias_at_final": False, "apply_final_activation": False,
                "input_sampling_rate": 16000, "output_sampling_rate": 48000, "hop_length": 80, "n_fft": 512,
                "win_size": 512, "num_mels": 64},
    },
}


@functools.lru_cache(maxsize=None)
def _meta_all(preset: str) -> dict:
    # Built once per preset (the 19B ones on the meta device: structure and sizes, no memory).
    return build_components(preset, device="meta")


def _meta(preset: str, components):
    built = _meta_all(preset)
    return {k: built[k] for k in (components or built)}


def _same(built: torch.nn.Module, kwargs: dict) -> None:
    config = dict(built.config)
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    diffs = {k: (config[k], v) for k, v in kwargs.items() if norm(config[k]) != norm(v)}
    assert not diffs


def test_preset_names_and_unknown_preset():
    assert {"tiny", "tiny-2.3", "ltx-2.0", "ltx-2.3"} <= set(preset_names())
    with pytest.raises(ValueError, match="unknown preset 'ltx-9'.*tiny"):
        preset_config("ltx-9")


def test_real_transformers_have_the_released_size():
    counts = {p: sum(x.numel() for x in _meta(p, ("transformer",))["transformer"].parameters()) for p in ("ltx-2.0", "ltx-2.3")}
    assert round(counts["ltx-2.0"] / 1e9, 2) == 18.88


def test_real_presets_match_released_metadata():
    from_2_0 = diffusers_configs_from_official({"transformer": LTX_2_0_TRANSFORMER})
    built = _meta("ltx-2.0", ("transformer", "connectors"))
    _same(built["transformer"], from_2_0["transformer"][1])
    _same(built["connectors"], from_2_0["connectors"][1])
    from_2_3 = diffusers_configs_from_official(LTX_2_3)
    built = _meta("ltx-2.3", ("transformer", "connectors", "vae", "vocoder"))
    for name in ("transformer", "vae"):
        _same(built[name], from_2_3[name][1])
    connectors = dict(from_2_3["connectors"][1], proj_bias=True)  # the bias shows in the file's keys, not its config
    _same(built["connectors"], connectors)
    assert from_2_3["vocoder"][0] == type(built["vocoder"]).__name__ == "LTX2VocoderWithBWE"
    _same(built["vocoder"], from_2_3["vocoder"][1])


@pytest.mark.parametrize("preset", ["tiny", "tiny-2.3", "ltx-2.0", "ltx-2.3"])
def test_every_preset_converts_to_an_official_config_and_back(preset):
    built = _meta(preset, None)
    configs = {k: (type(m).__name__, dict(m.config)) for k, m in built.items()}
    back = diffusers_configs_from_official(official_config_from_diffusers(configs))
    for name, (class_name, kwargs) in back.items():
        assert class_name == configs[name][0]
        kwargs.pop("text_proj_in_factor")  if name == "connectors" else None  # read off tensor shapes
        _same(built[name], kwargs)


def test_tiny_2_3_has_the_2_3_structure():
    comps = build_components("tiny-2.3")
    names = set(comps["transformer"].state_dict())
    assert {"prompt_adaln.linear.weight", "audio_prompt_adaln.linear.weight"} <= names
    assert "transformer_blocks.0.attn1.to_gate_logits.weight" in names
    assert not any(n.startswith("caption_projection") for n in names)
    assert {"video_text_proj_in.bias", "audio_text_proj_in.bias"} <= set(comps["connectors"].state_dict())
    assert type(comps["vocoder"]).__name__ == "LTX2VocoderWithBWE"
    assert all(t.numel() for t in comps["vocoder"].state_dict().values())


def test_tiny_seeds_are_deterministic_and_models_run():
    a = build_components("tiny", seed=0, components=("transformer", "vae"))
    b = build_components("tiny", seed=0, components=("transformer", "vae"))
    c = build_components("tiny", seed=1, components=("transformer",))
    for name in a:
        assert all(torch.equal(x, y) for x, y in zip(a[name].state_dict().values(), b[name].state_dict().values()))
    assert not torch.equal(a["transformer"].proj_in.weight, c["transformer"].proj_in.weight)
    with torch.no_grad():
        latents = a["vae"].encode(torch.rand(1, 3, 9, 32, 32) * 2 - 1).latent_dist.mean
    assert latents.shape == (1, 128, 2, 1, 1)
