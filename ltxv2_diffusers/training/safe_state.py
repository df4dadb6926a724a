"""Nested training state (optimizer, LR scheduler, RNG states) in one safetensors file, without pickle.

`torch.save`/`torch.load` of arbitrary objects runs code from the file on load (`__reduce__`), so a
checkpoint folder someone hands over could run anything on `--resume`. Here the structure is JSON in the
file's metadata and every tensor or numpy array is a safetensors tensor: loading reads data, never code.
Dicts keep their key types (an optimizer's state is keyed by int), tuples stay tuples.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

_TREE_KEY = "ltxv2_state_tree"


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = f"t{len(tensors):06d}"
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(value, np.ndarray):
        name = f"t{len(tensors):06d}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(value).copy())
        return {"__ndarray__": name}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a training state without pickle")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__ndarray__" in value:
            return tensors[value["__ndarray__"]].numpy()
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__dict__" in value:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}
        raise ValueError(f"unknown entry {sorted(value)} in the state tree")
    return value


def save_state(path: str | os.PathLike, state: Any) -> None:
    """Write `state` (dicts, lists, tuples, scalars, strings, tensors, numpy arrays) to `path`."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    save_file(tensors, str(path), metadata={_TREE_KEY: json.dumps(tree)})


def load_state(path: str | os.PathLike) -> Any:
    """Read what `save_state` wrote (raises `ValueError` naming the file when it is not such a file)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        if _TREE_KEY not in metadata:
            raise ValueError("no state tree in its metadata")
        return _decode(json.loads(metadata[_TREE_KEY]), tensors)
    except Exception as exc:  # safetensors' own errors, JSON errors, missing tensors
        raise ValueError(f"{path}: not a readable training state ({type(exc).__name__}: {exc})") from None
