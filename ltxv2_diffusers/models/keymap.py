"""Parameter-name maps between official LTX-2 checkpoints (ltx-core modules) and diffusers.

All functions are pure string maps that work on parameter names and on module paths alike
(`transformer_blocks.0.attn1.to_q` as well as `transformer_blocks.0.attn1.to_q.lora_A.weight`), and
each `*_to_official` is the exact inverse of its `*_from_official`.

Naming convention of the "official" side:
- transformer: names inside ltx-core's `LTXModel`, i.e. checkpoint keys without the
  `model.diffusion_model.` prefix (`TRANSFORMER_PREFIX`).
- connectors: full checkpoint keys (the connectors live under two prefixes in the file:
  `model.diffusion_model.{video,audio}_embeddings_connector.*` and `text_embedding_projection.*`).
- video VAE, audio VAE, vocoder: checkpoint keys without `vae.` / `audio_vae.` / `vocoder.`.

The renames are applied per dotted path segment (never by substring), which is what makes them
invertible: e.g. `adaln_single` is a substring of `av_ca_a2v_gate_adaln_single`, and diffusers'
own substring-based converter has to special-case it. LTX-2.3 adds `prompt_adaln_single` and
`audio_prompt_adaln_single` (diffusers: `prompt_adaln`, `audio_prompt_adaln`), which diffusers'
converter does not rename.
"""

from __future__ import annotations

TRANSFORMER_PREFIX = "model.diffusion_model."

# Top-level modules of the transformer (first path segment only).
_TRANSFORMER_TOP_LEVEL = {
    "patchify_proj": "proj_in",
    "audio_patchify_proj": "audio_proj_in",
    "adaln_single": "time_embed",
    "audio_adaln_single": "audio_time_embed",
    "prompt_adaln_single": "prompt_adaln",  # LTX-2.3
    "audio_prompt_adaln_single": "audio_prompt_adaln",  # LTX-2.3
    "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
    "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
    "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
    "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
}

# Segments below the top level (inside transformer blocks and their attentions).
_TRANSFORMER_NESTED = {
    "scale_shift_table_a2v_ca_video": "video_a2v_cross_attn_scale_shift_table",
    "scale_shift_table_a2v_ca_audio": "audio_a2v_cross_attn_scale_shift_table",
    "q_norm": "norm_q",
    "k_norm": "norm_k",
}


def _invert(table: dict[str, str]) -> dict[str, str]:
    inverse = {v: k for k, v in table.items()}
    assert len(inverse) == len(table), "rename table is not one-to-one"
    return inverse


_TRANSFORMER_TOP_LEVEL_INV = _invert(_TRANSFORMER_TOP_LEVEL)
_TRANSFORMER_NESTED_INV = _invert(_TRANSFORMER_NESTED)


def _rename_segments(key: str, top: dict[str, str], nested: dict[str, str]) -> str:
    parts = key.split(".")
    out = [top.get(parts[0], parts[0])]
    out.extend(nested.get(p, p) for p in parts[1:])
    return ".".join(out)


def transformer_key_from_official(key: str) -> str:
    """ltx-core `LTXModel` name (no `model.diffusion_model.` prefix) -> diffusers transformer name."""
    return _rename_segments(key, _TRANSFORMER_TOP_LEVEL, _TRANSFORMER_NESTED)


def transformer_key_to_official(key: str) -> str:
    """diffusers `LTX2VideoTransformer3DModel` name -> ltx-core `LTXModel` name (no prefix)."""
    return _rename_segments(key, _TRANSFORMER_TOP_LEVEL_INV, _TRANSFORMER_NESTED_INV)


# --- text connectors --------------------------------------------------------------------------------
# Official names are full checkpoint keys: the connector transformers sit under the transformer prefix,
# the Gemma feature projection(s) under `text_embedding_projection.`.
_CONNECTOR_PREFIXES = {
    TRANSFORMER_PREFIX + "video_embeddings_connector": "video_connector",
    TRANSFORMER_PREFIX + "audio_embeddings_connector": "audio_connector",
    "text_embedding_projection.aggregate_embed": "text_proj_in",  # LTX-2.0: one shared projection
    "text_embedding_projection.video_aggregate_embed": "video_text_proj_in",  # LTX-2.3: per modality
    "text_embedding_projection.audio_aggregate_embed": "audio_text_proj_in",
}
_CONNECTOR_PREFIXES_INV = _invert(_CONNECTOR_PREFIXES)
_CONNECTOR_NESTED = {"transformer_1d_blocks": "transformer_blocks", "q_norm": "norm_q", "k_norm": "norm_k"}
_CONNECTOR_NESTED_INV = _invert(_CONNECTOR_NESTED)


def _swap_prefix(key: str, prefixes: dict[str, str]) -> tuple[str, str] | None:
    for old, new in prefixes.items():
        if key == old or key.startswith(old + "."):
            return new, key[len(old) + 1 :]
    return None


def connectors_key_from_official(key: str) -> str:
    """Official checkpoint key of a text-connector tensor -> diffusers `LTX2TextConnectors` name."""
    swapped = _swap_prefix(key, _CONNECTOR_PREFIXES)
    if swapped is None:
        raise KeyError(f"{key!r} is not a text-connector key of an official LTX-2 checkpoint")
    head, rest = swapped
    rest = ".".join(_CONNECTOR_NESTED.get(p, p) for p in rest.split(".")) if rest else ""
    return f"{head}.{rest}" if rest else head


def connectors_key_to_official(key: str) -> str:
    """diffusers `LTX2TextConnectors` name -> official checkpoint key (full, with its prefix)."""
    swapped = _swap_prefix(key, _CONNECTOR_PREFIXES_INV)
    if swapped is None:
        raise KeyError(f"{key!r} is not a diffusers LTX2TextConnectors name")
    head, rest = swapped
    rest = ".".join(_CONNECTOR_NESTED_INV.get(p, p) for p in rest.split(".")) if rest else ""
    return f"{head}.{rest}" if rest else head


def is_official_connector_key(key: str) -> bool:
    """Whether a full official checkpoint key belongs to the text connectors."""
    return _swap_prefix(key, _CONNECTOR_PREFIXES) is not None


# --- video VAE ----------------------------------------------------------------------------------------
# Official encoder: down_blocks = [res, down, res, down, ..., res] (2n+1 entries, n downsamples); decoder:
# up_blocks = [res(mid), up, res, up, res, ...]. diffusers groups each (res, down) pair into one block and
# calls the last encoder / first decoder group `mid_block`. `num_down_blocks` (n) is 4 in every LTX-2 VAE.
VAE_STATISTICS = {
    "per_channel_statistics.mean-of-means": "latents_mean",
    "per_channel_statistics.std-of-means": "latents_std",
}
_VAE_STATISTICS_INV = _invert(VAE_STATISTICS)
_VAE_NESTED = {"res_blocks": "resnets"}
_VAE_NESTED_INV = _invert(_VAE_NESTED)


def vae_key_from_official(key: str, num_down_blocks: int = 4) -> str:
    """Official video-VAE name (checkpoint key without `vae.`) -> diffusers `AutoencoderKLLTX2Video` name."""
    if key in VAE_STATISTICS:
        return VAE_STATISTICS[key]
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "encoder" and parts[1] == "down_blocks":
        i = int(parts[2])
        if i == 2 * num_down_blocks:
            head = ["encoder", "mid_block"]
        elif i % 2 == 0:
            head = ["encoder", "down_blocks", str(i // 2)]
        else:
            head = ["encoder", "down_blocks", str(i // 2), "downsamplers", "0"]
        parts = head + parts[3:]
    elif len(parts) > 2 and parts[0] == "decoder" and parts[1] == "up_blocks":
        i = int(parts[2])
        if i == 0:
            head = ["decoder", "mid_block"]
        elif i % 2 == 1:
            head = ["decoder", "up_blocks", str(i // 2), "upsamplers", "0"]
        else:
            head = ["decoder", "up_blocks", str(i // 2 - 1)]
        parts = head + parts[3:]
    return ".".join(_VAE_NESTED.get(p, p) for p in parts)


def vae_key_to_official(key: str, num_down_blocks: int = 4) -> str:
    """diffusers `AutoencoderKLLTX2Video` name -> official video-VAE name (without `vae.`)."""
    if key in _VAE_STATISTICS_INV:
        return _VAE_STATISTICS_INV[key]
    parts = key.split(".")
    if len(parts) > 1 and parts[0] == "encoder" and parts[1] == "mid_block":
        parts = ["encoder", "down_blocks", str(2 * num_down_blocks)] + parts[2:]
    elif len(parts) > 2 and parts[0] == "encoder" and parts[1] == "down_blocks":
        k = int(parts[2])
        if parts[3:5] == ["downsamplers", "0"]:
            parts = ["encoder", "down_blocks", str(2 * k + 1)] + parts[5:]
        else:
            parts = ["encoder", "down_blocks", str(2 * k)] + parts[3:]
    elif len(parts) > 1 and parts[0] == "decoder" and parts[1] == "mid_block":
        parts = ["decoder", "up_blocks", "0"] + parts[2:]
    elif len(parts) > 2 and parts[0] == "decoder" and parts[1] == "up_blocks":
        k = int(parts[2])
        if parts[3:5] == ["upsamplers", "0"]:
            parts = ["decoder", "up_blocks", str(2 * k + 1)] + parts[5:]
        else:
            parts = ["decoder", "up_blocks", str(2 * k + 2)] + parts[3:]
    return ".".join(_VAE_NESTED_INV.get(p, p) for p in parts)


# --- audio VAE ----------------------------------------------------------------------------------------
def audio_vae_key_from_official(key: str) -> str:
    """Official audio-VAE name (without `audio_vae.`) -> diffusers `AutoencoderKLLTX2Audio` name."""
    return VAE_STATISTICS.get(key, key)


def audio_vae_key_to_official(key: str) -> str:
    """diffusers `AutoencoderKLLTX2Audio` name -> official audio-VAE name (without `audio_vae.`)."""
    return _VAE_STATISTICS_INV.get(key, key)


# --- vocoder ------------------------------------------------------------------------------------------
# The BWE vocoder's anti-aliased activations: official `act_post` / `downsample.lowpass.filter`, diffusers
# `act_out` / `downsample.filter` (diffusers' DownSample1d holds the filter itself).
_VOCODER_NESTED = {
    "ups": "upsamplers",
    "resblocks": "resnets",
    "conv_pre": "conv_in",
    "conv_post": "conv_out",
    "act_post": "act_out",
}
_VOCODER_NESTED_INV = _invert(_VOCODER_NESTED)


def vocoder_key_from_official(key: str) -> str:
    """Official vocoder name (without the file's `vocoder.`) -> diffusers `LTX2Vocoder[WithBWE]` name."""
    parts = key.split(".")
    out: list[str] = []
    for i, p in enumerate(parts):
        if p == "lowpass" and i > 0 and parts[i - 1] == "downsample":
            continue
        out.append(_VOCODER_NESTED.get(p, p))
    return ".".join(out)


def vocoder_key_to_official(key: str) -> str:
    """diffusers `LTX2Vocoder[WithBWE]` name -> official vocoder name (without the file's `vocoder.`)."""
    parts = key.split(".")
    out: list[str] = []
    for i, p in enumerate(parts):
        out.append(_VOCODER_NESTED_INV.get(p, p))
        if p == "downsample" and i + 1 < len(parts) and parts[i + 1] == "filter":
            out.append("lowpass")
    return ".".join(out)
