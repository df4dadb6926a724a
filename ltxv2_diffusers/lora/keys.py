"""LoRA module names in the three spellings users meet.

- diffusers: `transformer_blocks.0.attn1.to_q` (our internal spelling; files prefix `transformer.`)
- official / ComfyUI: ltx-core `LTXModel` names (files prefix `diffusion_model.`), mapped by
  `models.keymap`
- musubi / kohya: `lora_unet_model_transformer_blocks_0_attn1_to_q` (official name, dots flattened
  to underscores, behind musubi's `lora_unet_` prefix and the `model.` of its wrapper module)

Flattening is not invertible by string rules (`audio_to_video_attn`, `to_out_0`, `linear_1`), so
musubi names are resolved against the module names of a real transformer: the one being loaded
into, or else the tiny presets (same module structure as the full models, tiny widths).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

import torch

from ..models.keymap import transformer_key_from_official, transformer_key_to_official

OFFICIAL_PREFIX = "diffusion_model."
DIFFUSERS_PREFIX = "transformer."
MUSUBI_PREFIX = "lora_unet_"
MUSUBI_WRAPPER = "model_"  # musubi trains an `LTX2Wrapper` whose `.model` is the LTXModel

_BLOCK = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_FLAT_BLOCK = re.compile(r"^transformer_blocks_(\d+)_(.+)$")


def to_official(name: str) -> str:
    """diffusers module name -> official (ltx-core) module name."""
    return transformer_key_to_official(name)


def from_official(name: str) -> str:
    """official (ltx-core) module name -> diffusers module name."""
    return transformer_key_from_official(name)


def to_musubi(name: str) -> str:
    """diffusers module name -> musubi/kohya LoRA name (as musubi's LTX-2 trainer writes it)."""
    return MUSUBI_PREFIX + MUSUBI_WRAPPER + to_official(name).replace(".", "_")


class MusubiNameResolver:
    """Maps flattened musubi names back to diffusers module names, using known module names."""

    def __init__(self, diffusers_names: Iterable[str]):
        self._top: dict[str, str] = {}
        self._block: dict[str, str] = {}
        for name in diffusers_names:
            official = to_official(name)
            match = _BLOCK.match(official)
            table, key, value = (
                (self._block, match.group(2).replace(".", "_"), match.group(2))
                if match
                else (self._top, official.replace(".", "_"), official)
            )
            if table.get(key, value) != value:
                raise ValueError(f"module names {table[key]!r} and {value!r} flatten to the same musubi name")
            table[key] = value

    def knows(self, name: str) -> bool:
        """Whether a diffusers module name exists in this module structure (any block index)."""
        official = to_official(name)
        match = _BLOCK.match(official)
        if match:
            rest = match.group(2)
            return self._block.get(rest.replace(".", "_")) == rest
        return self._top.get(official.replace(".", "_")) == official

    def resolve(self, musubi_name: str) -> str | None:
        """The diffusers module name for `lora_unet_[model_]…`, or None if no known module matches."""
        if not musubi_name.startswith(MUSUBI_PREFIX):
            return None
        flat = musubi_name[len(MUSUBI_PREFIX):]
        candidates = [flat[len(MUSUBI_WRAPPER):], flat] if flat.startswith(MUSUBI_WRAPPER) else [flat]
        for candidate in candidates:
            official = self._resolve_flat(candidate)
            if official is not None:
                return from_official(official)
        return None

    def _resolve_flat(self, flat: str) -> str | None:
        match = _FLAT_BLOCK.match(flat)
        if match and match.group(2) in self._block:
            return f"transformer_blocks.{match.group(1)}.{self._block[match.group(2)]}"
        return self._top.get(flat)


def linear_module_names(transformer: torch.nn.Module) -> list[str]:
    """Names of the linear layers of a (possibly PEFT-wrapped) transformer, in model order."""
    names = []
    for name, module in transformer.named_modules():
        if name.endswith(".base_layer") or ".lora_" in name:
            continue
        base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
        if isinstance(base, torch.nn.Linear):
            names.append(name)
    return names


@functools.lru_cache(maxsize=1)
def default_musubi_resolver() -> MusubiNameResolver:
    """Resolver over the module names of the tiny presets (`tiny`, `tiny-2.3`): the LTX-2.0 and 2.3
    layouts with the same module names as the full-size models (block indices are matched generically)."""
    from ..models.presets import build_components, preset_names

    names: list[str] = []
    for preset in preset_names():
        if preset.startswith("tiny"):
            model = build_components(preset, components=("transformer",))["transformer"]
            names.extend(linear_module_names(model))
    return MusubiNameResolver(dict.fromkeys(names))
