"""diffusers component configs <-> the JSON config stored in an official LTX-2 checkpoint.

An official single-file checkpoint carries `{"transformer": ..., "vae": ..., "audio_vae": ...,
"vocoder": ...}` as JSON under the safetensors metadata key `"config"`; ltx-core builds every component
from it. `diffusers_configs_from_official` turns it into constructor kwargs of the diffusers classes
(LTX-2.0 and LTX-2.3 layouts; no network); `official_config_from_diffusers` is the inverse used when
writing. The text connectors are configured by `connector_*` keys of the `"transformer"` section; the
width of the Gemma feature projection is not in the config, so it is read off the tensor shapes.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

# ltx-core checks these transformer values (`check_config_value`) and refuses anything else.
_TRANSFORMER_FIXED = {
    "_class_name": "AVTransformer3DModel",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_type": "default",
    "dropout": 0.0,
    "double_self_attention": False,
    "num_embeds_ada_norm": 1000,
    "num_vector_embeds": None,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "upcast_attention": False,
    "use_linear_projection": False,
    "qk_norm": "rms_norm",
    "standardization_norm": "rms_norm",
    "norm_elementwise_affine": False,
    "positional_embedding_type": "rope",
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "av_cross_ada_norm": True,
    "use_middle_indices_grid": True,
    "causal_temporal_positioning": True,
    "use_embeddings_connector": True,
    "connector_norm_output": True,
}

# LTX-2.3 moves the caption projection out of the transformer into the text connectors.
_CAPTION_IN_CONNECTOR = {
    "caption_proj_before_connector": True,
    "caption_projection_first_linear": False,
    "caption_projection_second_linear": False,
    "caption_proj_input_norm": False,
    "text_encoder_norm_type": "per_token_rms",
}

_DOWN_TYPES = {"compress_space_res": "spatial", "compress_time_res": "temporal", "compress_all_res": "spatiotemporal"}
_UP_TYPES = {"compress_space": "spatial", "compress_time": "temporal", "compress_all": "spatiotemporal"}


class OfficialConfigError(ValueError):
    """A config that one side cannot represent."""


# ---------------------------------------------------------------------------------------------------
# official -> diffusers
# ---------------------------------------------------------------------------------------------------


# Every key of an official `"transformer"` section we understand: the fixed values above, what the
# conversion below reads, and keys ltx-core reads that change nothing diffusers builds.
_KNOWN_TRANSFORMER_KEYS = frozenset(_TRANSFORMER_FIXED) | frozenset(_CAPTION_IN_CONNECTOR) | {
    "in_channels", "out_channels", "num_attention_heads", "attention_head_dim", "cross_attention_dim",
    "positional_embedding_max_pos", "apply_gated_attention", "cross_attention_adaln", "audio_in_channels",
    "audio_out_channels", "audio_num_attention_heads", "audio_attention_head_dim", "audio_cross_attention_dim",
    "audio_positional_embedding_max_pos", "caption_channels", "norm_eps", "num_layers", "positional_embedding_theta",
    "timestep_scale_multiplier", "av_ca_timestep_scale_multiplier", "rope_type", "frequencies_precision",
    "ff_bias", "audio_ff_bias", "use_prompt_adaln_single", "use_keyframes_abs_pos_embedding",
    "connector_num_attention_heads", "connector_attention_head_dim", "connector_num_layers",
    "connector_num_learnable_registers", "connector_positional_embedding_max_pos", "connector_apply_gated_attention",
    "connector_ff_bias", "audio_connector_num_attention_heads", "audio_connector_attention_head_dim",
    "audio_connector_num_layers",
}
# Values diffusers' classes cannot build otherwise (key: the only value they support).
_SUPPORTED_ONLY = {"connector_ff_bias": True, "use_middle_indices_grid": True, "positional_embedding_type": "rope"}

MODEL_VERSIONS = ("2.0.0", "2.3.0", "2.5.0")


def check_transformer_section(t: Mapping[str, Any], where: str = "checkpoint") -> None:
    """Raise `OfficialConfigError` naming any key of an official `"transformer"` section we do not understand
    (or a value diffusers cannot build), instead of silently building another model."""
    unknown = sorted(set(t) - _KNOWN_TRANSFORMER_KEYS)
    if unknown:
        raise OfficialConfigError(
            f"{where}: config key(s) {', '.join(unknown)} in the transformer section are not understood by this "
            "version of ltxv2-diffusers; the model would be built without them. Update ltxv2-diffusers, or report "
            "the checkpoint if you are on the latest version."
        )
    for key, value in _SUPPORTED_ONLY.items():
        if key in t and t[key] != value:
            raise OfficialConfigError(f"{where}: config {key}={t[key]!r} is not supported (only {value!r})")


def model_version_of(transformer_config: Mapping[str, Any]) -> str:
    """The official `model_version` ("2.0.0", "2.3.0", "2.5.0") a diffusers transformer config corresponds to."""
    c = transformer_config
    if not c.get("ff_bias", True) or c.get("use_keyframes_abs_pos_embedding", False):
        return "2.5.0"
    if c.get("gated_attn", False) or c.get("cross_attn_mod", False) or not c.get("use_prompt_embeddings", True):
        return "2.3.0"
    return "2.0.0"


def transformer_config_from_official(t: Mapping[str, Any]) -> dict[str, Any]:
    """`LTX2VideoTransformer3DModel` kwargs from an official `"transformer"` section (see `check_transformer_section`)."""
    check_transformer_section(t)
    max_pos = list(t.get("positional_embedding_max_pos", [20, 2048, 2048]))
    gated = bool(t.get("apply_gated_attention", False))
    cross_mod = bool(t.get("cross_attention_adaln", False))
    cfg = dict(
        in_channels=t.get("in_channels", 128),
        out_channels=t.get("out_channels", 128),
        num_attention_heads=t.get("num_attention_heads", 32),
        attention_head_dim=t.get("attention_head_dim", 128),
        cross_attention_dim=t.get("cross_attention_dim", 4096),
        pos_embed_max_pos=max_pos[0],
        base_height=max_pos[1],
        base_width=max_pos[2],
        gated_attn=gated,
        cross_attn_mod=cross_mod,
        audio_in_channels=t.get("audio_in_channels", 128),
        audio_out_channels=t.get("audio_out_channels", 128),
        audio_num_attention_heads=t.get("audio_num_attention_heads", 32),
        audio_attention_head_dim=t.get("audio_attention_head_dim", 64),
        audio_cross_attention_dim=t.get("audio_cross_attention_dim", 2048),
        audio_pos_embed_max_pos=list(t.get("audio_positional_embedding_max_pos", [20]))[0],
        audio_gated_attn=gated,
        audio_cross_attn_mod=cross_mod,
        num_layers=t.get("num_layers", 48),
        norm_eps=t.get("norm_eps", 1e-6),
        caption_channels=t.get("caption_channels", 3840),
        rope_theta=float(t.get("positional_embedding_theta", 10000.0)),
        rope_double_precision=t.get("frequencies_precision", False) == "float64",
        timestep_scale_multiplier=int(t.get("timestep_scale_multiplier", 1000)),
        # ltx-core's own default is 1 when the key is absent; released files say 1000.
        cross_attn_timestep_scale_multiplier=int(t.get("av_ca_timestep_scale_multiplier", 1)),
        rope_type=t.get("rope_type", "interleaved"),
        use_prompt_embeddings=not t.get("caption_proj_before_connector", False),
    )
    for key in ("ff_bias", "audio_ff_bias", "use_prompt_adaln_single", "use_keyframes_abs_pos_embedding"):
        if key in t:
            cfg[key] = bool(t[key])
    return cfg


def connectors_config_from_official(
    t: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, Any]:
    """`LTX2TextConnectors` kwargs from an official `"transformer"` section and the file's tensor shapes.

    `shapes` maps official checkpoint keys to shapes; the Gemma feature projection's input width (hidden
    size x (layers + 1)) is taken from it (49 x 3840 for Gemma-3 12B when absent).
    """
    shapes = shapes or {}
    v_heads = t.get("connector_num_attention_heads", 30)
    v_dim = t.get("connector_attention_head_dim", 128)
    v_layers = t.get("connector_num_layers", 2)
    per_modality = bool(t.get("caption_proj_before_connector", False))
    gated = bool(t.get("connector_apply_gated_attention", False))
    caption_channels = t.get("caption_channels", 3840)
    proj = "text_embedding_projection.video_aggregate_embed" if per_modality else "text_embedding_projection.aggregate_embed"
    proj_shape = shapes.get(proj + ".weight")
    factor = 49
    if proj_shape is not None:
        if proj_shape[1] % caption_channels:
            raise OfficialConfigError(
                f"{proj}.weight has input width {proj_shape[1]}, not a multiple of caption_channels={caption_channels}"
            )
        factor = proj_shape[1] // caption_channels
    cfg = dict(
        caption_channels=caption_channels,
        text_proj_in_factor=factor,
        video_connector_num_attention_heads=v_heads,
        video_connector_attention_head_dim=v_dim,
        video_connector_num_layers=v_layers,
        video_connector_num_learnable_registers=t.get("connector_num_learnable_registers", 128),
        video_gated_attn=gated,
        audio_connector_num_attention_heads=t.get("audio_connector_num_attention_heads", v_heads),
        audio_connector_attention_head_dim=t.get("audio_connector_attention_head_dim", v_dim),
        audio_connector_num_layers=t.get("audio_connector_num_layers", v_layers),
        audio_connector_num_learnable_registers=t.get("connector_num_learnable_registers", 128),
        audio_gated_attn=gated,
        connector_rope_base_seq_len=list(t.get("connector_positional_embedding_max_pos", [1]))[0],
        rope_theta=float(t.get("positional_embedding_theta", 10000.0)),
        rope_double_precision=t.get("frequencies_precision", False) == "float64",
        causal_temporal_positioning=False,
        rope_type=t.get("rope_type", "interleaved"),
        per_modality_projections=per_modality,
    )
    if per_modality:
        cfg.update(
            video_hidden_dim=cfg["video_connector_num_attention_heads"] * cfg["video_connector_attention_head_dim"],
            audio_hidden_dim=cfg["audio_connector_num_attention_heads"] * cfg["audio_connector_attention_head_dim"],
            proj_bias=(proj + ".bias") in shapes if shapes else True,
        )
    else:
        cfg["proj_bias"] = "text_embedding_projection.aggregate_embed.bias" in shapes
    return cfg


def _block(entry) -> tuple[str, dict[str, Any]]:
    name, params = entry[0], entry[1] if len(entry) > 1 else {}
    return name, ({"num_layers": params} if isinstance(params, int) else dict(params))


def vae_config_from_official(v: Mapping[str, Any]) -> dict[str, Any]:
    """`AutoencoderKLLTX2Video` kwargs from an official `"vae"` section."""
    for key, want in (("dims", 3), ("norm_layer", "pixel_norm"), ("latent_log_var", "uniform")):
        if v.get(key, want) != want:
            raise OfficialConfigError(f"vae.{key}={v[key]!r} is not supported (diffusers has only {want!r})")
    latent = v.get("latent_channels", 128)
    enc = [_block(b) for b in v.get("encoder_blocks", [])]
    dec = [_block(b) for b in v.get("decoder_blocks", [])]
    if not enc or len(enc) % 2 == 0 or not dec or len(dec) % 2 == 0:
        raise OfficialConfigError("vae encoder_blocks/decoder_blocks must alternate res_x and compress blocks")

    layers, down_types, block_out, ch = [], [], [], latent
    for i, (name, params) in enumerate(enc):
        if i % 2 == 0:
            if name != "res_x":
                raise OfficialConfigError(f"vae encoder block {i} is {name!r}; expected res_x (alternating layout)")
            layers.append(params["num_layers"])
        else:
            if name not in _DOWN_TYPES:
                raise OfficialConfigError(f"vae encoder block {i} {name!r} has no diffusers counterpart")
            ch *= params.get("multiplier", 2)
            down_types.append(_DOWN_TYPES[name])
            block_out.append(ch)

    dec_layers, inject, up_types, residual, factors = [], [], [], [], []
    for i, (name, params) in enumerate(dec):
        if i % 2 == 0:
            if name != "res_x":
                raise OfficialConfigError(f"vae decoder block {i} is {name!r}; expected res_x (alternating layout)")
            dec_layers.append(params["num_layers"])
            inject.append(bool(params.get("inject_noise", False)))
        else:
            if name not in _UP_TYPES:
                raise OfficialConfigError(f"vae decoder block {i} {name!r} has no diffusers counterpart")
            up_types.append(_UP_TYPES[name])
            residual.append(bool(params.get("residual", False)))
            factors.append(params.get("multiplier", 1))
    # ltx-core's decoder starts at 8 x base width and divides by each multiplier, in reversed block order.
    feature = v.get("decoder_base_channels", 128) * 8
    dec_out_rev = [feature]
    for f in reversed(factors[1:]):
        feature //= f
        dec_out_rev.append(feature)
    spatial = v.get("patch_size", 4) * 2 ** sum(t in ("spatial", "spatiotemporal") for t in down_types)
    temporal = 2 ** sum(t in ("temporal", "spatiotemporal") for t in down_types)
    padding = v.get("spatial_padding_mode")
    return dict(
        in_channels=v.get("in_channels", 3),
        out_channels=v.get("out_channels", 3),
        latent_channels=latent,
        block_out_channels=tuple(block_out),
        layers_per_block=tuple(layers),
        downsample_type=tuple(down_types),
        spatio_temporal_scaling=(True,) * len(down_types),
        decoder_block_out_channels=tuple(reversed(dec_out_rev)),
        decoder_layers_per_block=tuple(dec_layers),
        decoder_spatio_temporal_scaling=(True,) * len(up_types),
        decoder_inject_noise=tuple(inject),
        # diffusers reverses every decoder list except upsample_type, which is in decoding order.
        upsample_type=tuple(reversed(up_types)),
        upsample_residual=tuple(residual),
        upsample_factor=tuple(factors),
        timestep_conditioning=bool(v.get("timestep_conditioning", False)),
        patch_size=v.get("patch_size", 4),
        patch_size_t=1,
        scaling_factor=float(v.get("scaling_factor", 1.0)),
        encoder_causal=True,
        decoder_causal=bool(v.get("causal_decoder", False)),
        # ltx-core reads one `spatial_padding_mode` for both halves, else zeros / reflect.
        encoder_spatial_padding_mode=v.get("encoder_spatial_padding_mode", padding or "zeros"),
        decoder_spatial_padding_mode=v.get("decoder_spatial_padding_mode", padding or "reflect"),
        spatial_compression_ratio=spatial,
        temporal_compression_ratio=temporal,
    )


def has_diffusion_decoder(v: Mapping[str, Any]) -> bool:
    """True for the `"vae"` section of a video VAE whose decoder is a diffusion decoder (LTX-2.5's default
    `ltx-2.5-video-vae-*`): its halves' configs nest under `"encoder"` / `"decoder"`."""
    return isinstance(v.get("encoder"), Mapping)


# A placeholder decoder for an encoder-only video VAE: the smallest diffusers builds (it is never loaded
# nor run; `models.loading` swaps it for a module that refuses to decode).
_PLACEHOLDER_DECODER = {"decoder_blocks": [["res_x", {"num_layers": 1}], ["compress_all", {"multiplier": 1}],
                                           ["res_x", {"num_layers": 1}]], "decoder_base_channels": 1}


def encoder_only_vae_config_from_official(v: Mapping[str, Any]) -> dict[str, Any]:
    """`AutoencoderKLLTX2Video` kwargs for the encoder of a diffusion-decoder VAE section (see
    `has_diffusion_decoder`), with a placeholder decoder."""
    e = v["encoder"]
    flat = {
        "dims": e.get("dims", v.get("dims", 3)),
        "in_channels": e.get("in_channels", 3),
        "latent_channels": e.get("out_channels", v.get("latent_channels", 128)),
        "encoder_blocks": e.get("blocks", e.get("encoder_blocks", [])),
        "patch_size": e.get("patch_size", 4),
        "norm_layer": e.get("norm_layer", "pixel_norm"),
        "latent_log_var": e.get("latent_log_var", "uniform"),
        "encoder_spatial_padding_mode": e.get("spatial_padding_mode", v.get("encoder_spatial_padding_mode", "zeros")),
        **_PLACEHOLDER_DECODER,
    }
    return vae_config_from_official(flat)


def audio_vae_config_from_official(a: Mapping[str, Any]) -> dict[str, Any]:
    """`AutoencoderKLLTX2Audio` kwargs from an official `"audio_vae"` section."""
    params = a.get("model", {}).get("params", {})
    dd = params.get("ddconfig", {})
    pre = a.get("preprocessing", {})
    stft, mel = pre.get("stft", {}), pre.get("mel", {})
    attn = dd.get("attn_resolutions", [])
    return dict(
        base_channels=dd.get("ch", 128),
        output_channels=dd.get("out_ch", 2),
        ch_mult=tuple(dd.get("ch_mult", (1, 2, 4))),
        num_res_blocks=dd.get("num_res_blocks", 2),
        attn_resolutions=tuple(attn) if attn else None,
        in_channels=dd.get("in_channels", 2),
        resolution=dd.get("resolution", 256),
        latent_channels=dd.get("z_channels", 8),
        norm_type=dd.get("norm_type", "pixel"),
        causality_axis=dd.get("causality_axis", "height"),
        dropout=dd.get("dropout", 0.0),
        mid_block_add_attention=dd.get("mid_block_add_attention", True),
        sample_rate=params.get("sampling_rate", 16000),
        mel_hop_length=stft.get("hop_length", 160),
        is_causal=stft.get("causal", True),
        mel_bins=dd.get("mel_bins") or mel.get("n_mel_channels") or a.get("variables", {}).get("mel_bins"),
        double_z=dd.get("double_z", True),
    )


def _vocoder_kwargs(c: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    amp = c.get("resblock", "1") == "AMP1"
    final = c.get("use_tanh_at_final", True)
    return {
        f"{prefix}in_channels": c.get("num_mels", 64) * 2 if prefix else 128,
        f"{prefix}hidden_channels": c.get("upsample_initial_channel", 1024),
        f"{prefix}out_channels": 2 if c.get("stereo", True) else 1,
        f"{prefix}upsample_kernel_sizes": list(c.get("upsample_kernel_sizes", [16, 15, 8, 4, 4])),
        f"{prefix}upsample_factors": list(c.get("upsample_rates", [6, 5, 2, 2, 2])),
        f"{prefix}resnet_kernel_sizes": list(c.get("resblock_kernel_sizes", [3, 7, 11])),
        f"{prefix}resnet_dilations": [list(d) for d in c.get("resblock_dilation_sizes", [[1, 3, 5]] * 3)],
        f"{prefix}act_fn": c.get("activation", "snakebeta") if amp else "leaky_relu",
        f"{prefix}antialias": amp,
        f"{prefix}final_act_fn": "tanh" if final else None,
        f"{prefix}final_bias": bool(c.get("use_bias_at_final", True)),
    }


def vocoder_config_from_official(c: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(diffusers class name, kwargs) of the vocoder from an official `"vocoder"` section."""
    if "bwe" not in c:
        kwargs = _vocoder_kwargs(c)
        kwargs["output_sampling_rate"] = c.get("output_sampling_rate", 24000)
        return "LTX2Vocoder", kwargs
    bwe = c["bwe"]
    kwargs = _vocoder_kwargs(c.get("vocoder", {}))
    bwe_kwargs = _vocoder_kwargs(bwe, prefix="bwe_")
    bwe_kwargs["bwe_in_channels"] = bwe.get("num_mels", 64) * 2
    kwargs.update(bwe_kwargs)
    kwargs.update(
        filter_length=bwe.get("n_fft", 512),
        hop_length=bwe.get("hop_length", 80),
        window_length=bwe.get("win_size", bwe.get("n_fft", 512)),
        num_mel_channels=bwe.get("num_mels", 64),
        input_sampling_rate=bwe.get("input_sampling_rate", 16000),
        output_sampling_rate=bwe.get("output_sampling_rate", 48000),
    )
    return "LTX2VocoderWithBWE", kwargs


def diffusers_configs_from_official(
    config: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[str, dict[str, Any]]]:
    """`{component: (diffusers class name, kwargs)}` for every component the official config describes."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    t = config.get("transformer")
    if t is not None:
        out["transformer"] = ("LTX2VideoTransformer3DModel", transformer_config_from_official(t))
        out["connectors"] = ("LTX2TextConnectors", connectors_config_from_official(t, shapes))
    if config.get("vae") is not None:
        v = config["vae"]
        kwargs = encoder_only_vae_config_from_official(v) if has_diffusion_decoder(v) else vae_config_from_official(v)
        out["vae"] = ("AutoencoderKLLTX2Video", kwargs)
    if config.get("audio_vae") is not None:
        out["audio_vae"] = ("AutoencoderKLLTX2Audio", audio_vae_config_from_official(config["audio_vae"]))
    if config.get("vocoder") is not None:
        out["vocoder"] = vocoder_config_from_official(config["vocoder"])
    return out


# ---------------------------------------------------------------------------------------------------
# diffusers -> official
# ---------------------------------------------------------------------------------------------------


def _same(c: Mapping[str, Any], a: str, b: str, what: str):
    if c[a] != c[b]:
        raise OfficialConfigError(f"the official format has one {what} for video and audio; got {a}={c[a]!r}, {b}={c[b]!r}")
    return c[a]


def transformer_config_to_official(c: Mapping[str, Any]) -> dict[str, Any]:
    """Official `"transformer"` section for a `LTX2VideoTransformer3DModel` config."""
    for key, want in (("patch_size", 1), ("patch_size_t", 1), ("audio_patch_size", 1), ("audio_patch_size_t", 1),
                      ("activation_fn", "gelu-approximate"), ("qk_norm", "rms_norm_across_heads"),
                      ("norm_elementwise_affine", False), ("attention_bias", True), ("attention_out_bias", True),
                      ("perturbed_attn", False)):
        if c.get(key, want) != want:
            raise OfficialConfigError(f"transformer {key}={c[key]!r} has no official counterpart (needs {want!r})")
    t = dict(_TRANSFORMER_FIXED)
    t.update(
        attention_head_dim=c["attention_head_dim"],
        caption_channels=c["caption_channels"],
        cross_attention_dim=c["cross_attention_dim"],
        in_channels=c["in_channels"],
        norm_eps=c["norm_eps"],
        num_attention_heads=c["num_attention_heads"],
        num_layers=c["num_layers"],
        out_channels=c["out_channels"] or c["in_channels"],
        positional_embedding_theta=float(c["rope_theta"]),
        positional_embedding_max_pos=[c["pos_embed_max_pos"], c["base_height"], c["base_width"]],
        timestep_scale_multiplier=c["timestep_scale_multiplier"],
        av_ca_timestep_scale_multiplier=float(c["cross_attn_timestep_scale_multiplier"]),
        audio_num_attention_heads=c["audio_num_attention_heads"],
        audio_attention_head_dim=c["audio_attention_head_dim"],
        audio_in_channels=c["audio_in_channels"],
        audio_out_channels=c["audio_out_channels"] or c["audio_in_channels"],
        audio_cross_attention_dim=c["audio_cross_attention_dim"],
        audio_positional_embedding_max_pos=[c["audio_pos_embed_max_pos"]],
        rope_type=c["rope_type"],
        frequencies_precision="float64" if c["rope_double_precision"] else "float32",
        apply_gated_attention=_same(c, "gated_attn", "audio_gated_attn", "gated-attention switch"),
        cross_attention_adaln=_same(c, "cross_attn_mod", "audio_cross_attn_mod", "cross-attention AdaLN switch"),
    )
    if not c.get("use_prompt_embeddings", True):
        t.update(_CAPTION_IN_CONNECTOR)
    for key, default in (("ff_bias", True), ("audio_ff_bias", True), ("use_prompt_adaln_single", True),
                         ("use_keyframes_abs_pos_embedding", False)):
        if c.get(key, default) != default:
            t[key] = c[key]
    return t


def connectors_config_to_official(c: Mapping[str, Any]) -> dict[str, Any]:
    """The `connector_*` keys (of the official `"transformer"` section) for a `LTX2TextConnectors` config."""
    if c.get("causal_temporal_positioning", False):
        raise OfficialConfigError("connectors causal_temporal_positioning=True has no official counterpart")
    if c["video_connector_num_learnable_registers"] != c["audio_connector_num_learnable_registers"]:
        raise OfficialConfigError("the official format has one learnable-register count for both connectors")
    t = dict(
        connector_num_attention_heads=c["video_connector_num_attention_heads"],
        connector_attention_head_dim=c["video_connector_attention_head_dim"],
        connector_num_layers=c["video_connector_num_layers"],
        connector_num_learnable_registers=c["video_connector_num_learnable_registers"],
        connector_positional_embedding_max_pos=[c["connector_rope_base_seq_len"]],
    )
    # LTX-2.0 configs have no audio_connector_* keys (readers fall back to the video connector's), and
    # tools tell 2.3 checkpoints by them (musubi-tuner's --ltx_version check): write them only when they differ.
    for key in ("num_attention_heads", "attention_head_dim", "num_layers"):
        if c[f"audio_connector_{key}"] != c[f"video_connector_{key}"]:
            t[f"audio_connector_{key}"] = c[f"audio_connector_{key}"]
    gated = _same(c, "video_gated_attn", "audio_gated_attn", "connector gated-attention switch")
    if gated:
        t["connector_apply_gated_attention"] = True
    if c.get("per_modality_projections", False):
        t.update(_CAPTION_IN_CONNECTOR)
    # Shared with the transformer section; `_merge_transformer_section` checks they agree.
    t.update(
        caption_channels=c["caption_channels"],
        positional_embedding_theta=float(c["rope_theta"]),
        rope_type=c["rope_type"],
        frequencies_precision="float64" if c["rope_double_precision"] else "float32",
    )
    return t


def vae_config_to_official(c: Mapping[str, Any]) -> dict[str, Any]:
    """Official `"vae"` section for an `AutoencoderKLLTX2Video` config."""
    n = len(c["block_out_channels"])
    checks = (
        ("patch_size_t", c.get("patch_size_t", 1) == 1),
        ("encoder_causal", c.get("encoder_causal", True)),
        ("spatio_temporal_scaling", all(_as_tuple(c["spatio_temporal_scaling"], n))),
        ("decoder_spatio_temporal_scaling",
         all(_as_tuple(c["decoder_spatio_temporal_scaling"], len(c["decoder_block_out_channels"])))),
        ("down_block_types", all(t == "LTX2VideoDownBlock3D" for t in c["down_block_types"])),
    )
    for key, ok in checks:
        if not ok:
            raise OfficialConfigError(f"vae {key}={c[key]!r} has no official counterpart")
    latent = c["latent_channels"]
    enc, ch = [], latent
    inv_down = {v: k for k, v in _DOWN_TYPES.items()}
    for i in range(n):
        enc.append(["res_x", {"num_layers": c["layers_per_block"][i]}])
        out = c["block_out_channels"][i]
        if out % ch:
            raise OfficialConfigError(f"vae block_out_channels {c['block_out_channels']} must grow by integer factors from {latent}")
        enc.append([inv_down[c["downsample_type"][i]], {"multiplier": out // ch}])
        ch = out
    enc.append(["res_x", {"num_layers": c["layers_per_block"][n]}])

    m = len(c["decoder_block_out_channels"])
    inject = _as_tuple(c["decoder_inject_noise"], m + 1)
    residual = _as_tuple(c["upsample_residual"], m)
    inv_up = {v: k for k, v in _UP_TYPES.items()}
    up_types = tuple(reversed(c["upsample_type"]))  # diffusers keeps this one list in decoding order
    dec = [["res_x", {"num_layers": c["decoder_layers_per_block"][0], "inject_noise": inject[0]}]]
    for j in range(m):
        name = inv_up[up_types[j]]
        params: dict[str, Any] = {"multiplier": c["upsample_factor"][j]}
        if residual[j]:
            if name != "compress_all":
                raise OfficialConfigError(f"vae upsample {j} ({up_types[j]}) cannot be residual in ltx-core")
            params["residual"] = True
        dec.append([name, params])
        dec.append(["res_x", {"num_layers": c["decoder_layers_per_block"][j + 1], "inject_noise": inject[j + 1]}])
    top = c["decoder_block_out_channels"][-1]
    if top % 8:
        raise OfficialConfigError(f"vae decoder top width {top} must be 8 x a base width (ltx-core)")
    v = {
        "_class_name": "CausalVideoAutoencoder",
        "dims": 3,
        "in_channels": c["in_channels"],
        "out_channels": c["out_channels"],
        "latent_channels": latent,
        "encoder_blocks": enc,
        "decoder_blocks": dec,
        "scaling_factor": float(c["scaling_factor"]),
        "norm_layer": "pixel_norm",
        "patch_size": c["patch_size"],
        "latent_log_var": "uniform",
        "use_quant_conv": False,
        "causal_decoder": bool(c["decoder_causal"]),
        "timestep_conditioning": bool(c["timestep_conditioning"]),
        "normalize_latent_channels": False,
        "encoder_base_channels": latent,
        "decoder_base_channels": top // 8,
        "encoder_spatial_padding_mode": c["encoder_spatial_padding_mode"],
        "decoder_spatial_padding_mode": c["decoder_spatial_padding_mode"],
    }
    enc_pad, dec_pad = c["encoder_spatial_padding_mode"], c["decoder_spatial_padding_mode"]
    if enc_pad == dec_pad:
        v["spatial_padding_mode"] = enc_pad
    elif (enc_pad, dec_pad) != ("zeros", "reflect"):
        raise OfficialConfigError(
            f"ltx-core reads one spatial_padding_mode (else zeros/reflect); got encoder {enc_pad!r}, decoder {dec_pad!r}"
        )
    return v


def audio_vae_config_to_official(c: Mapping[str, Any]) -> dict[str, Any]:
    """Official `"audio_vae"` section for an `AutoencoderKLLTX2Audio` config."""
    dd = {
        "double_z": bool(c["double_z"]),
        "mel_bins": c["mel_bins"],
        "z_channels": c["latent_channels"],
        "resolution": c["resolution"],
        "downsample_time": False,
        "in_channels": c["in_channels"],
        "out_ch": c["output_channels"],
        "ch": c["base_channels"],
        "ch_mult": list(c["ch_mult"]),
        "num_res_blocks": c["num_res_blocks"],
        "attn_resolutions": list(c["attn_resolutions"] or []),
        "dropout": c["dropout"],
        "mid_block_add_attention": bool(c["mid_block_add_attention"]),
        "norm_type": c["norm_type"],
        "causality_axis": c["causality_axis"],
    }
    return {
        "model": {"params": {"ddconfig": dd, "sampling_rate": c["sample_rate"]}},
        "preprocessing": {
            "stft": {"filter_length": 1024, "hop_length": c["mel_hop_length"], "win_length": 1024,
                     "causal": bool(c["is_causal"])},
            "mel": {"n_mel_channels": c["mel_bins"], "mel_fmin": 0, "mel_fmax": c["sample_rate"] // 2},
        },
    }


def _vocoder_section(c: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    g = lambda k: c[prefix + k]  # noqa: E731
    amp = g("act_fn") != "leaky_relu"
    if amp != bool(g("antialias")):
        raise OfficialConfigError(f"vocoder {prefix}act_fn={g('act_fn')!r} with {prefix}antialias={g('antialias')!r} has no official counterpart")
    out = {
        "upsample_initial_channel": g("hidden_channels"),
        "resblock": "AMP1" if amp else "1",
        "upsample_rates": list(g("upsample_factors")),
        "resblock_kernel_sizes": list(g("resnet_kernel_sizes")),
        "upsample_kernel_sizes": list(g("upsample_kernel_sizes")),
        "resblock_dilation_sizes": [list(d) for d in g("resnet_dilations")],
        "stereo": g("out_channels") == 2,
        "use_tanh_at_final": g("final_act_fn") == "tanh",
        "use_bias_at_final": bool(g("final_bias")),
    }
    if amp:
        out["activation"] = g("act_fn")
    return out


def vocoder_config_to_official(class_name: str, c: Mapping[str, Any]) -> dict[str, Any]:
    """Official `"vocoder"` section for an `LTX2Vocoder` / `LTX2VocoderWithBWE` config."""
    if class_name == "LTX2Vocoder":
        out = _vocoder_section(c)
        out["output_sampling_rate"] = c["output_sampling_rate"]
        return out
    bwe = _vocoder_section(c, "bwe_")
    bwe.update(
        apply_final_activation=False,
        input_sampling_rate=c["input_sampling_rate"],
        output_sampling_rate=c["output_sampling_rate"],
        hop_length=c["hop_length"],
        n_fft=c["filter_length"],
        win_size=c["window_length"],
        num_mels=c["num_mel_channels"],
    )
    return {"vocoder": _vocoder_section(c), "bwe": bwe}


def _as_tuple(value, n: int) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


def official_config_from_diffusers(
    configs: Mapping[str, tuple[str, Mapping[str, Any]]], base: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Official checkpoint config for `{component: (diffusers class name, config)}`.

    `base` (e.g. the config of the file the components were loaded from) keeps sections and keys this
    module does not generate (scheduler, audio preprocessing details); generated keys win.
    """
    out: dict[str, Any] = copy.deepcopy(dict(base)) if base else {}
    section: dict[str, Any] = {}
    if "transformer" in configs:
        section.update(transformer_config_to_official(configs["transformer"][1]))
    if "connectors" in configs:
        conn = connectors_config_to_official(configs["connectors"][1])
        for key in ("caption_channels", "positional_embedding_theta", "rope_type", "frequencies_precision",
                    *_CAPTION_IN_CONNECTOR):
            if key in section and key in conn and section[key] != conn[key]:
                raise OfficialConfigError(
                    f"transformer and connectors disagree on {key}: {section[key]!r} vs {conn[key]!r}; "
                    "the official format stores it once"
                )
        if "transformer" in configs:
            missing = set(_CAPTION_IN_CONNECTOR) & (set(section) ^ set(conn))
            if missing:
                raise OfficialConfigError(
                    "transformer and connectors disagree on where the caption projection lives "
                    "(use_prompt_embeddings vs per_modality_projections)"
                )
            conn.pop("caption_channels")  # the transformer's own value is kept
        section.update(conn)
    if section:
        out["transformer"] = {**out.get("transformer", {}), **section}
    if "vae" in configs:
        out["vae"] = {**out.get("vae", {}), **vae_config_to_official(configs["vae"][1])}
    if "audio_vae" in configs:
        generated = audio_vae_config_to_official(configs["audio_vae"][1])
        out["audio_vae"] = _deep_update(out.get("audio_vae", {}), generated)
    if "vocoder" in configs:
        class_name, cfg = configs["vocoder"]
        out["vocoder"] = vocoder_config_to_official(class_name, cfg)
    return out


def _deep_update(base: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in new.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
