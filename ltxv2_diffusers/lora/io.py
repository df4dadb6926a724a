"""Read and write LoRA files in the three layouts users load.

- `official` (ComfyUI, ltx-core): `diffusion_model.<official module>.lora_A.weight` / `lora_B.weight`,
  alpha/rank folded into `lora_B` (those loaders apply scale 1.0 when a file has no `.alpha`).
- `diffusers`: `transformer.<diffusers module>.lora_A.weight` / `lora_B.weight`, rank and alpha in the
  `lora_adapter_metadata` JSON (PEFT `LoraConfig` kwargs), as `LTX2Pipeline.save_lora_weights` writes.
- `musubi` (kohya): `lora_unet_model_<official module, dots as _>.lora_down.weight` / `lora_up.weight`
  and a scalar `.alpha` per module.

All three are read into one `LoraWeights`; writes are atomic (temp file in the same folder, fsync,
`os.replace`), so a crash never leaves a half-written LoRA where users look for one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from .keys import (
    DIFFUSERS_PREFIX,
    MUSUBI_PREFIX,
    OFFICIAL_PREFIX,
    MusubiNameResolver,
    default_musubi_resolver,
    from_official,
    to_musubi,
    to_official,
)
from .weights import LoraModuleWeights, LoraWeights, NonFiniteWeights

FORMATS = ("official", "diffusers", "musubi")
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
NETWORK_MODULE = "ltxv2_diffusers.lora"
MUSUBI_NETWORK_MODULE = "networks.lora_ltx2"  # what musubi-tuner's LTX-2 generator and merger import

# Metadata keys each writer regenerates from the weights; everything else is carried through conversions.
_FORMAT_KEYS = {
    "format",
    DIFFUSERS_METADATA_KEY,
    "lora_format",
    "alpha_folded",
    "ss_network_dim",
    "ss_network_alpha",
    "ss_network_module",
}

_A_SUFFIXES = (".lora_A.weight", ".lora_down.weight")
_B_SUFFIXES = (".lora_B.weight", ".lora_up.weight")
_ALPHA_SUFFIX = ".alpha"


class LoraFormatError(ValueError):
    """A file that is not an LTX-2 transformer LoRA, or does not fit the model."""


# ----------------------------------------------------------------------------- metadata


def lora_metadata(
    *,
    mode: str | None = None,
    base_model: str | None = None,
    training_args: Mapping[str, object] | None = None,
    rank: int | None = None,
    alpha: float | None = None,
    **extra: object,
) -> dict[str, str]:
    """Metadata for a trained LoRA: `rank`, `alpha` (as trained), `ltx_mode`, `base_model`, `training_args`.

    Values that are not strings are stored as JSON strings (safetensors metadata is str -> str).
    """
    raw: dict[str, object] = {
        "rank": rank,
        "alpha": alpha,
        "ltx_mode": None if mode is None else str(mode),
        "base_model": None if base_model is None else str(base_model),
        "training_args": None if training_args is None else dict(training_args),
        **extra,
    }
    return {k: v if isinstance(v, str) else json.dumps(v, default=str, sort_keys=True) for k, v in raw.items() if v is not None}


def _carried(metadata: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in metadata.items() if k not in _FORMAT_KEYS}


def _common_metadata(lora: LoraWeights, fmt: str) -> dict[str, str]:
    rank, alpha = lora.main_rank_alpha()
    meta = {"format": "pt", "lora_format": fmt, "network_module": NETWORK_MODULE}
    meta.update(_carried(lora.metadata))
    # `rank`/`alpha` describe how the LoRA was trained; a folded source already lost alpha, so keep what it said.
    meta.setdefault("rank", json.dumps(rank))
    meta.setdefault("alpha", json.dumps(alpha))
    return meta


# ----------------------------------------------------------------------------- to state dict


def lora_to_state_dict(
    lora: LoraWeights, fmt: str, dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`(tensors, metadata)` of `lora` in layout `fmt` (`official`, `diffusers` or `musubi`)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown LoRA format {fmt!r}; choose one of {', '.join(FORMATS)}")
    sd: dict[str, torch.Tensor] = {}
    meta = _common_metadata(lora, fmt)
    for name, m in lora.modules.items():
        out_dtype = dtype or m.down.dtype
        down = m.down.to(out_dtype).contiguous()
        if fmt == "official":
            key = OFFICIAL_PREFIX + to_official(name)
            sd[f"{key}.lora_A.weight"] = down
            sd[f"{key}.lora_B.weight"] = m.folded_up().to(dtype or m.up.dtype).contiguous()
        elif fmt == "diffusers":
            key = DIFFUSERS_PREFIX + name
            sd[f"{key}.lora_A.weight"] = down
            sd[f"{key}.lora_B.weight"] = m.up.to(dtype or m.up.dtype).contiguous()
        else:
            key = to_musubi(name)
            sd[f"{key}.lora_down.weight"] = down
            sd[f"{key}.lora_up.weight"] = m.up.to(dtype or m.up.dtype).contiguous()
            sd[f"{key}{_ALPHA_SUFFIX}"] = torch.tensor(m.alpha, dtype=torch.float32)
    if fmt == "official":
        meta["alpha_folded"] = "true"
    elif fmt == "diffusers":
        meta[DIFFUSERS_METADATA_KEY] = json.dumps(_peft_config(lora), indent=2, sort_keys=True)
    else:
        rank, alpha = lora.main_rank_alpha()
        meta.update(ss_network_module=MUSUBI_NETWORK_MODULE, ss_network_dim=str(rank), ss_network_alpha=str(alpha))
    return sd, meta


def _peft_config(lora: LoraWeights) -> dict[str, object]:
    """PEFT `LoraConfig` kwargs with the `transformer.` prefix diffusers' loader strips."""
    rank, alpha = lora.main_rank_alpha()
    config = {
        "r": rank,
        "lora_alpha": alpha,
        # Full names: PEFT matches by suffix, and a bare `to_q` would adapt every attention.
        "target_modules": sorted(lora.modules),
        "rank_pattern": {n: m.rank for n, m in lora.modules.items() if m.rank != rank},
        "alpha_pattern": {n: m.alpha for n, m in lora.modules.items() if m.alpha != alpha},
        "lora_dropout": 0.0,
        "bias": "none",
        "use_dora": False,
        "use_rslora": False,
    }
    return {f"transformer.{k}": v for k, v in config.items()}


# ----------------------------------------------------------------------------- from state dict


def detect_lora_format(keys) -> str:
    """`official`, `diffusers` or `musubi` from the key names; raises `LoraFormatError` otherwise."""
    keys = list(keys)
    found = set()
    for key in keys:
        if key.startswith(OFFICIAL_PREFIX):
            found.add("official")
        elif key.startswith(DIFFUSERS_PREFIX):
            found.add("diffusers")
        elif key.startswith(MUSUBI_PREFIX):
            found.add("musubi")
    if len(found) == 1:
        return found.pop()
    expected = (
        "expected official/ComfyUI keys 'diffusion_model.<module>.lora_A.weight', diffusers keys "
        "'transformer.<module>.lora_A.weight' or musubi keys 'lora_unet_<module>.lora_down.weight'"
    )
    if not found:
        sample = ", ".join(repr(k) for k in keys[:3]) or "no tensors at all"
        raise LoraFormatError(f"not an LTX-2 transformer LoRA ({sample}); {expected}")
    raise LoraFormatError(f"mixes LoRA layouts {sorted(found)}; {expected}, one layout per file")


def lora_from_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    resolver: MusubiNameResolver | None = None,
) -> LoraWeights:
    """Parse a LoRA state dict of any supported layout into `LoraWeights`.

    `resolver` decides which module names exist (default: the tiny presets' module structure);
    pass `MusubiNameResolver(linear_module_names(transformer))` to check against a given model.
    """
    metadata = dict(metadata or {})
    fmt = detect_lora_format(state_dict)
    resolver = resolver or default_musubi_resolver()
    prefix = {"official": OFFICIAL_PREFIX, "diffusers": DIFFUSERS_PREFIX, "musubi": ""}[fmt]

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unknown_keys = []
    for key, tensor in state_dict.items():
        if not key.startswith(prefix):
            unknown_keys.append(key)
            continue
        for part, suffixes in (("down", _A_SUFFIXES), ("up", _B_SUFFIXES), ("alpha", (_ALPHA_SUFFIX,))):
            suffix = next((s for s in suffixes if key.endswith(s)), None)
            if suffix is not None:
                pairs.setdefault(key[len(prefix): -len(suffix)], {})[part] = tensor
                break
        else:
            unknown_keys.append(key)
    if unknown_keys:
        hint = ""
        if any("lokr" in k or "magnitude" in k or "dora_scale" in k for k in unknown_keys):
            hint = " (LoKr/DoRA adapters are not supported; convert to a plain LoRA first)"
        raise LoraFormatError(
            f"{fmt} LoRA has {len(unknown_keys)} keys that are not LoRA weights of the transformer, e.g. "
            f"{unknown_keys[:3]}{hint}"
        )

    peft_config = _diffusers_adapter_config(metadata) if fmt == "diffusers" else {}
    modules: dict[str, LoraModuleWeights] = {}
    unknown_modules = []
    for raw_name, parts in pairs.items():
        if "down" not in parts or "up" not in parts:
            missing = "lora_A/lora_down" if "down" not in parts else "lora_B/lora_up"
            raise LoraFormatError(f"LoRA module {raw_name!r} has no {missing} weight")
        if fmt == "musubi":
            name = resolver.resolve(raw_name)
        else:
            name = from_official(raw_name) if fmt == "official" else raw_name
            name = name if resolver.knows(name) else None
        if name is None:
            unknown_modules.append(raw_name)
            continue
        if name in modules:
            raise LoraFormatError(f"LoRA names module {name!r} twice")
        rank = int(parts["down"].shape[0])
        if "alpha" in parts:
            if parts["alpha"].numel() != 1:
                raise LoraFormatError(f"LoRA module {raw_name!r}: alpha has {parts['alpha'].numel()} values, not one")
            alpha = float(parts["alpha"].float().item())
        elif fmt == "diffusers":
            alpha = _peft_alpha(peft_config, name, rank)
        else:
            alpha = float(rank)  # folded (official/ComfyUI) or kohya without alpha: scale 1.0
        if not math.isfinite(alpha):
            raise LoraFormatError(f"LoRA module {raw_name!r}: alpha is {alpha} (must be a finite number)")
        try:
            modules[name] = LoraModuleWeights(parts["down"], parts["up"], alpha)
        except ValueError as exc:
            raise LoraFormatError(f"LoRA module {raw_name!r}: {exc}") from None
    if unknown_modules:
        raise LoraFormatError(
            f"{fmt} LoRA names {len(unknown_modules)} modules that the LTX-2 transformer does not have, e.g. "
            f"{sorted(unknown_modules)[:3]} (LoRAs for the text connectors or other models are not supported)"
        )
    if not modules:
        raise LoraFormatError("LoRA file has no LoRA modules")
    return LoraWeights(modules, _carried(metadata), fmt)


def _diffusers_adapter_config(metadata: Mapping[str, str]) -> dict[str, object]:
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoraFormatError(f"metadata '{DIFFUSERS_METADATA_KEY}' is not JSON ({exc})") from None
    return {k[len("transformer."):]: v for k, v in packed.items() if k.startswith("transformer.")}


def _peft_alpha(config: Mapping[str, object], name: str, rank: int) -> float:
    """The alpha PEFT would use for `name` (diffusers' default without metadata is alpha == rank)."""
    if not config:
        return float(rank)
    from peft.utils.other import get_pattern_key

    def lookup(pattern: Mapping[str, object] | None, default: object) -> object:
        pattern = pattern or {}
        key = get_pattern_key(list(pattern), name)
        return pattern.get(key, default)

    raw_rank = lookup(config.get("rank_pattern"), config.get("r", rank))
    raw_alpha = lookup(config.get("alpha_pattern"), config.get("lora_alpha", rank))
    try:
        expected_rank, alpha = int(raw_rank), float(raw_alpha)
    except (TypeError, ValueError):
        raise LoraFormatError(f"LoRA module {name!r}: metadata '{DIFFUSERS_METADATA_KEY}' gives rank {raw_rank!r}, "
                              f"alpha {raw_alpha!r}; both must be numbers") from None
    if expected_rank != rank:
        raise LoraFormatError(f"LoRA module {name!r}: metadata says rank {expected_rank}, tensors have rank {rank}")
    if config.get("use_rslora"):
        alpha = alpha * math.sqrt(rank)  # rsLoRA scales by alpha/sqrt(r); store as alpha/r
    return alpha


# ----------------------------------------------------------------------------- files


def resolve_lora_path(path: str | os.PathLike) -> Path:
    """A LoRA file path; a diffusers LoRA folder resolves to its `pytorch_lora_weights.safetensors`."""
    path = Path(path)
    if path.is_dir():
        candidate = path / DIFFUSERS_WEIGHT_NAME
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} is a folder without {DIFFUSERS_WEIGHT_NAME}; pass the LoRA file itself")
        return candidate
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} does not exist")
    return path


def read_lora(path: str | os.PathLike, *, resolver: MusubiNameResolver | None = None) -> LoraWeights:
    """Read a LoRA file (official/ComfyUI, diffusers or musubi; detected from its keys)."""
    file = resolve_lora_path(path)
    try:
        with safetensors.safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (safetensors.SafetensorError, OSError) as exc:
        raise LoraFormatError(f"{file}: not a readable safetensors file ({exc})") from None
    try:
        lora = lora_from_state_dict(state_dict, metadata, resolver=resolver)
    except LoraFormatError as exc:
        raise LoraFormatError(f"{file}: {exc}") from None
    lora.check_finite(str(file))
    return lora


def lora_parameter_count(path: str | os.PathLike) -> int:
    """How many parameters a LoRA file's matrices hold, from its header alone (no tensor is read)."""
    file = resolve_lora_path(path)
    try:
        with safetensors.safe_open(str(file), framework="pt") as handle:
            shapes = [handle.get_slice(key).get_shape() for key in handle.keys()]
    except (safetensors.SafetensorError, OSError) as exc:
        raise LoraFormatError(f"{file}: not a readable safetensors file ({exc})") from None
    return sum(math.prod(shape) for shape in shapes if len(shape) >= 2)  # alphas are scalars


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: temp file in the target folder, fsync, `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def write_lora(lora: LoraWeights, path: str | os.PathLike, fmt: str, *, dtype: torch.dtype | None = None) -> Path:
    """Write `lora` to one file in layout `fmt`; a `diffusers` path that is a folder gets the standard file name."""
    path = Path(path)
    if fmt == "diffusers" and (path.is_dir() or path.suffix != ".safetensors"):
        path = path / DIFFUSERS_WEIGHT_NAME
    # Never deliver a LoRA that breaks every model it is loaded into; the caller keeps what it had.
    lora.check_finite(f"not writing {path}")
    sd, meta = lora_to_state_dict(lora, fmt, dtype)
    if dtype is not None and not all(torch.isfinite(t).all() for t in sd.values()):
        raise NonFiniteWeights(f"not writing {path}: values overflow --dtype {dtype} (NaN/inf after the cast)")
    return atomic_save_safetensors(sd, path, meta)


def save_lora(
    lora: LoraWeights,
    output_dir: str | os.PathLike,
    output_name: str,
    *,
    dtype: torch.dtype | None = None,
) -> tuple[Path, Path]:
    """Write the two files a training run delivers.

    `{output_dir}/{output_name}.safetensors` (official/ComfyUI layout, loads in ComfyUI, the official
    pipelines and `LTX2Pipeline.load_lora_weights`) and
    `{output_dir}/{output_name}-diffusers/pytorch_lora_weights.safetensors` (diffusers layout).
    """
    if not output_name or "/" in output_name or os.sep in output_name:
        raise ValueError(f"--output_name {output_name!r} must be a plain file stem (no folders)")
    output_dir = Path(output_dir)
    official = write_lora(lora, output_dir / f"{output_name}.safetensors", "official", dtype=dtype)
    diffusers = write_lora(lora, output_dir / f"{output_name}-diffusers" / DIFFUSERS_WEIGHT_NAME, "diffusers", dtype=dtype)
    return official, diffusers
