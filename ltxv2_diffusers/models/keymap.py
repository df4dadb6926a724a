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
