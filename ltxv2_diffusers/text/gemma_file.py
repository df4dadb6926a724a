"""Official single-file Gemma text encoders (LTX-2.5's `text_encoders/gemma4-...-with-proj-...safetensors`).

Such a file holds the Gemma weights in ComfyUI's key layout (the language model flat under `model.*`, the
vision / audio embedders as `vision_model.*`, `multi_modal_projector.*`, `audio_projector.*`), the
tokenizer as a `tokenizer_json` byte tensor, other Hugging Face files as `hf_asset__<name>` byte tensors,
the Hugging Face config as JSON under the metadata key `gemma_config`, and the LTX text projection
(`text_embedding_projection.*`, read by `models.loading` as part of the connectors).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ltxv2_diffusers.models.loading import GEMMA_CONFIG_KEY, PROJECTION_PREFIX, CheckpointKeyError

TOKENIZER_KEY = "tokenizer_json"
ASSET_PREFIX = "hf_asset__"
_NOT_GEMMA = (PROJECTION_PREFIX, TOKENIZER_KEY, ASSET_PREFIX)
# ComfyUI's names for the Gemma 4 base model's embedders.
_COMFY_TOWERS = {"vision_model.": "vision_embedder.", "multi_modal_projector.": "embed_vision.",
                 "audio_projector.": "embed_audio."}


def is_gemma_file(path: str | os.PathLike) -> bool:
    """True for a .safetensors file carrying `gemma_config` metadata."""
    path = Path(path)
    if not (path.is_file() and path.suffix == ".safetensors"):
        return False
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return GEMMA_CONFIG_KEY in (f.metadata() or {})


def _bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.to(torch.uint8).flatten().tolist())


def load_gemma_file(path: str | os.PathLike, dtype: torch.dtype | None = None):
    """`(base model, tokenizer)` from an official single-file Gemma text encoder; every Gemma tensor must
    fit the model built from its `gemma_config` (an error names what is missing or unexpected)."""
    from accelerate import init_empty_weights
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        if GEMMA_CONFIG_KEY not in metadata:
            raise ValueError(f"--text_encoder {path}: no {GEMMA_CONFIG_KEY!r} metadata; not an official Gemma text "
                             "encoder file (pass it, or a Hugging Face Gemma folder)")
        keys = list(f.keys())
        if TOKENIZER_KEY not in keys:
            raise ValueError(f"--text_encoder {path}: has no {TOKENIZER_KEY!r} tensor; pass --tokenizer too")
        with tempfile.TemporaryDirectory() as tmp:
            # AutoTokenizer reads the tokenizer the way Hugging Face does, special tokens included.
            Path(tmp, "tokenizer.json").write_bytes(_bytes(f.get_tensor(TOKENIZER_KEY)))
            for key in keys:
                if key.startswith(ASSET_PREFIX) and key.endswith("tokenizer_config.json"):
                    Path(tmp, "tokenizer_config.json").write_bytes(_bytes(f.get_tensor(key)))
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        config_dict = json.loads(metadata[GEMMA_CONFIG_KEY])
        config = AutoConfig.for_model(**config_dict)
        with init_empty_weights(include_buffers=False):
            model = AutoModel.from_config(config)
        children = {name for name, _ in model.named_children()}
        names = {_hf_name(k, children): k for k in keys if not k.startswith(_NOT_GEMMA)}
        expected = set(model.state_dict())
        missing, unexpected = expected - set(names), set(names) - expected
        if missing or unexpected:
            raise CheckpointKeyError(
                f"--text_encoder {path}: the Gemma weights do not fit its gemma_config "
                f"({config_dict.get('model_type')}). Missing: {sorted(missing)[:10] or 'none'}. "
                f"Unexpected: {sorted(names[n] for n in unexpected)[:10] or 'none'}."
            )
        state = {}
        for name, key in names.items():
            t = f.get_tensor(key)
            state[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), tokenizer


def _hf_name(key: str, children: set[str]) -> str:
    """A file key -> the base model's parameter name (Comfy flat or Hugging Face `model.*` layouts)."""
    for comfy, hf in _COMFY_TOWERS.items():
        if key.startswith(comfy):
            return hf + key[len(comfy):]
    if key.startswith("model."):
        rest = key[len("model."):]
        if rest.split(".", 1)[0] in children:  # Hugging Face layout: model.language_model.*, model.vision_tower.*
            return rest
        return "language_model." + rest  # Comfy's flat language model
    return key


def _file_key(name: str, children: set[str]) -> str:
    """A base model parameter name -> its key in the official file (the inverse of `_hf_name`)."""
    for comfy, hf in _COMFY_TOWERS.items():
        if name.startswith(hf):
            return comfy + name[len(hf):]
    if name.startswith("language_model."):
        return "model." + name[len("language_model."):]
    return "model." + name


def write_gemma_file(path: str | os.PathLike, model: torch.nn.Module, tokenizer,
                     extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a Gemma base model + tokenizer (+ `extra` tensors such as the text projection) as an official
    single-file text encoder, the layout `load_gemma_file` reads; written beside and renamed."""
    from safetensors.torch import save_file

    children = {name for name, _ in model.named_children()}
    tensors = {_file_key(n, children): t.detach().cpu().contiguous() for n, t in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tensors[TOKENIZER_KEY] = torch.tensor(list(Path(tmp, "tokenizer.json").read_bytes()), dtype=torch.uint8)
        config = Path(tmp, "tokenizer_config.json")
        if config.is_file():
            tensors[ASSET_PREFIX + "tokenizer_config.json"] = torch.tensor(list(config.read_bytes()), dtype=torch.uint8)
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp_path), metadata={"format": "pt", GEMMA_CONFIG_KEY: model.config.to_json_string()})
    os.replace(tmp_path, path)
    return path
