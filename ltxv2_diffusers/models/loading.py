"""Load LTX-2 components from official single-file checkpoints or diffusers folders / Hub ids; write
the official single-file layout.

Official files (`ltx-2-19b-dev.safetensors`, `ltx-2.3-22b-dev.safetensors`, ...) hold
`model.diffusion_model.*` (transformer, plus the `*_embeddings_connector.*` text connectors), `vae.*`,
`audio_vae.*`, `vocoder.*` and `text_embedding_projection.*`, with the ltx-core config as JSON under the
safetensors metadata key `"config"`. We build the diffusers configs from that metadata (no network),
create each model with empty (meta) parameters and assign the file's tensors one by one, so a 19B file
needs about 1x its size in RAM. Every key must be accounted for: missing or unexpected keys are an error
that lists them. Tensors that the official file carries but neither implementation uses
(`per_channel_statistics.channel` / `mean-of-stds`) are kept on the module and written back on save, so
official -> diffusers -> official round trips are exact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from . import keymap
from .official_config import (
    diffusers_configs_from_official,
    official_config_from_diffusers,
    transformer_config_from_official,
)

COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")
BACKENDS = ("official", "diffusers")

_FILE_PREFIX = {"vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder."}
# Present in released files, read by neither ltx-core nor diffusers.
_UNUSED_STATISTICS = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")

OFFICIAL_CONFIG_ATTR = "_ltxv2_official_config"
OFFICIAL_EXTRAS_ATTR = "_ltxv2_official_extras"


class CheckpointKeyError(KeyError):
    """Missing or unexpected tensors when loading or saving a checkpoint."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------------
# official key <-> (component, diffusers name)
# ---------------------------------------------------------------------------------------------------


def official_key_component(key: str) -> str | None:
    """The component an official checkpoint key belongs to, or None for a key of no LTX-2 component."""
    if keymap.is_official_connector_key(key):
        return "connectors"
    if key.startswith(keymap.TRANSFORMER_PREFIX):
        return "transformer"
    for component, prefix in _FILE_PREFIX.items():
        if key.startswith(prefix):
            return component
    return None


def _from_official(component: str, key: str, vae_down_blocks: int = 4) -> str:
    if component == "transformer":
        return keymap.transformer_key_from_official(key[len(keymap.TRANSFORMER_PREFIX) :])
    if component == "connectors":
        return keymap.connectors_key_from_official(key)
    rest = key[len(_FILE_PREFIX[component]) :]
    if component == "vae":
        return keymap.vae_key_from_official(rest, vae_down_blocks)
    if component == "audio_vae":
        return keymap.audio_vae_key_from_official(rest)
    return keymap.vocoder_key_from_official(rest)


def _to_official(component: str, name: str, vae_down_blocks: int = 4) -> str:
    if component == "transformer":
        return keymap.TRANSFORMER_PREFIX + keymap.transformer_key_to_official(name)
    if component == "connectors":
        return keymap.connectors_key_to_official(name)
    if component == "vae":
        return "vae." + keymap.vae_key_to_official(name, vae_down_blocks)
    if component == "audio_vae":
        return "audio_vae." + keymap.audio_vae_key_to_official(name)
    return "vocoder." + keymap.vocoder_key_to_official(name)


def _is_unused_statistic(component: str, key: str) -> bool:
    return component in ("vae", "audio_vae") and key[len(_FILE_PREFIX[component]) :] in _UNUSED_STATISTICS


# ---------------------------------------------------------------------------------------------------
# layout detection
# ---------------------------------------------------------------------------------------------------


def detect_layout(path_or_repo: str | os.PathLike) -> str:
    """`"official"` for a single `.safetensors` file, `"diffusers"` for a folder or a Hub id."""
    path = Path(path_or_repo)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: expected an official LTX-2 .safetensors file or a diffusers folder")
        return "official"
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "config.json").is_file() or _component_folders(path):
            return "diffusers"
        raise ValueError(
            f"{path}: folder has no model_index.json, config.json or component subfolders "
            f"({', '.join(COMPONENTS)}); not a diffusers model folder"
        )
    if str(path_or_repo).endswith(".safetensors"):
        raise FileNotFoundError(f"{path_or_repo}: no such checkpoint file")
    return "diffusers"  # a Hub repo id


def _component_folders(path: Path) -> dict[str, Path]:
    """Component subfolders (`transformer/config.json`, ...) of a folder without model_index.json."""
    return {c: path / c for c in COMPONENTS if (path / c / "config.json").is_file()}


def _resolve_backend(path_or_repo, backend: str | None) -> str:
    if backend is None:
        return detect_layout(path_or_repo)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: choose one of {', '.join(BACKENDS)} (or None to detect)")
    detected = detect_layout(path_or_repo) if Path(path_or_repo).exists() else "diffusers"
    if detected != backend:
        raise ValueError(
            f"--ltxv2_backend {backend} does not fit {path_or_repo}: it is a {detected} layout "
            f"({'single .safetensors file' if detected == 'official' else 'diffusers folder or Hub id'})"
        )
    return backend


# ---------------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------------


def read_official_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(ltx-core config from the metadata, {key: shape}) of an official checkpoint, without loading tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    if "config" not in metadata:
        raise ValueError(
            f"{path}: no 'config' in the safetensors metadata, so this is not an official LTX-2 checkpoint "
            "(or it was stripped); pass a diffusers folder / Hub id, or a file written by ltx-core or "
            "ltxv2_diffusers.save_official_checkpoint"
        )
    return json.loads(metadata["config"]), shapes


def read_transformer_config(path_or_repo: str | os.PathLike, backend: str | None = None) -> dict[str, Any] | None:
    """The diffusers transformer config of a local checkpoint without loading any tensor (None when the
    source is a Hub id or holds no transformer)."""
    if _resolve_backend(path_or_repo, backend) == "official":
        config, _ = read_official_header(path_or_repo)
        section = config.get("transformer")
        return None if section is None else transformer_config_from_official(section)
    path = Path(path_or_repo)
    for candidate in (path / "transformer" / "config.json", path / "config.json"):
        if candidate.is_file():
            config = json.loads(candidate.read_text(encoding="utf-8"))
            if config.get("_class_name") == "LTX2VideoTransformer3DModel":
                return config
    return None


def _list(keys: Iterable[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _diffusers_class(class_name: str) -> type:
    import diffusers
    from diffusers.pipelines import ltx2
    from diffusers.pipelines.ltx2 import vocoder

    for module in (diffusers, ltx2, vocoder):
        if hasattr(module, class_name):
            return getattr(module, class_name)
    raise ValueError(f"unknown diffusers class {class_name!r}")


def _load_official(path, torch_dtype, wanted: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights
    from safetensors import safe_open

    config, shapes = read_official_header(path)
    by_component: dict[str, list[str]] = {}
    strays = []
    for key in shapes:
        component = official_key_component(key)
        if component is None:
            strays.append(key)
        else:
            by_component.setdefault(component, []).append(key)
    if strays:
        raise CheckpointKeyError(f"{path}: unexpected keys that belong to no LTX-2 component: {_list(strays)}")
    configs = diffusers_configs_from_official(config, shapes)

    out: dict[str, torch.nn.Module] = {}
    with safe_open(str(path), framework="pt") as f:
        for component in wanted:
            keys = by_component.get(component)
            if not keys:
                continue
            if component not in configs:
                raise ValueError(f"{path}: has {component} weights but its config metadata has no section for them")
            class_name, kwargs = configs[component]
            # Parameters on meta, buffers computed for real: buffers that are not in the file stay valid.
            with init_empty_weights(include_buffers=False):
                model = _diffusers_class(class_name)(**kwargs)
            down = len(kwargs.get("block_out_channels", ())) or 4
            expected = set(model.state_dict())
            extras = {k: f.get_tensor(k) for k in keys if _is_unused_statistic(component, k)}
            names = {_from_official(component, k, down): k for k in keys if k not in extras}
            missing, unexpected = expected - set(names), set(names) - expected
            if missing or unexpected:
                raise CheckpointKeyError(
                    f"{path}: {component} ({class_name}) does not match the file. "
                    f"Missing from the file: {_list(missing) or 'none'}. "
                    f"Unexpected in the file: {_list(names[n] for n in unexpected) or 'none'}."
                )
            state = {}
            for name, key in names.items():
                tensor = f.get_tensor(key)
                state[name] = tensor.to(torch_dtype) if torch_dtype is not None and tensor.is_floating_point() else tensor
            model.load_state_dict(state, strict=True, assign=True)
            del state
            if torch_dtype is not None:
                model.to(torch_dtype)
            setattr(model, OFFICIAL_CONFIG_ATTR, config)
            setattr(model, OFFICIAL_EXTRAS_ATTR, extras)
            out[component] = model.eval()
    return out


def _load_diffusers(path_or_repo, torch_dtype, wanted: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    path = Path(path_or_repo)
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file() and not (path / "config.json").is_file():  # component subfolders only
            out = {}
            for component, folder in _component_folders(path).items():
                if component in wanted:
                    cls = _diffusers_class(json.loads((folder / "config.json").read_text())["_class_name"])
                    out[component] = _from_pretrained(cls, str(path), component, torch_dtype)
            return out
        if not index.is_file():  # a single model folder: config.json + weights
            cls = _diffusers_class(json.loads((path / "config.json").read_text())["_class_name"])
            component = _component_of_class(cls.__name__, path)
            if component not in wanted:
                return {}
            return {component: _from_pretrained(cls, str(path), None, torch_dtype)}
        model_index = json.loads(index.read_text())
    else:
        model_index = json.loads(Path(_hub_file(str(path_or_repo), "model_index.json")).read_text())
    out = {}
    for component in wanted:
        entry = model_index.get(component)
        if not entry or entry[1] is None:
            continue
        cls = _diffusers_class(entry[1])
        out[component] = _from_pretrained(cls, str(path_or_repo), component, torch_dtype)
    return out


def _hub_file(repo_id: str, filename: str) -> str:
    """A file of a Hub repo (from the local cache when offline); an id that cannot be found is one clear error."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return hf_hub_download(repo_id, filename)
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(
            f"{repo_id}: not a local file or folder, and not in the Hugging Face cache while the Hub cannot be "
            f"reached (offline, or HF_HUB_OFFLINE=1); pass a local path, or download it first: hf download {repo_id}"
        ) from exc


def _component_of_class(class_name: str, where) -> str:
    for component, names in (
        ("transformer", ("LTX2VideoTransformer3DModel",)),
        ("connectors", ("LTX2TextConnectors",)),
        ("vae", ("AutoencoderKLLTX2Video",)),
        ("audio_vae", ("AutoencoderKLLTX2Audio",)),
        ("vocoder", ("LTX2Vocoder", "LTX2VocoderWithBWE")),
    ):
        if class_name in names:
            return component
    raise ValueError(f"{where}: {class_name} is not an LTX-2 component class")


def _from_pretrained(cls, path: str, subfolder: str | None, torch_dtype) -> torch.nn.Module:
    model, info = cls.from_pretrained(
        path, subfolder=subfolder, torch_dtype=torch_dtype, low_cpu_mem_usage=True, output_loading_info=True
    )
    missing, unexpected = info.get("missing_keys", []), info.get("unexpected_keys", [])
    mismatched = info.get("mismatched_keys", [])
    if missing or unexpected or mismatched:
        where = f"{path}/{subfolder}" if subfolder else path
        raise CheckpointKeyError(
            f"{where}: {cls.__name__} does not match its weights. Missing: {_list(missing) or 'none'}. "
            f"Unexpected: {_list(unexpected) or 'none'}. Mismatched shapes: {_list(str(m) for m in mismatched) or 'none'}."
        )
    return model.eval()


def load_components(
    path_or_repo: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    backend: str | None = None,
    components: Iterable[str] | None = None,
) -> dict[str, torch.nn.Module]:
    """Load `{transformer, connectors, vae, audio_vae, vocoder}` (diffusers classes) from `path_or_repo`.

    Accepts an official single-file checkpoint (LTX-2.0 / 2.3; config from its metadata, no network) or
    a diffusers folder / Hub id. `backend` ("official" | "diffusers", the old `--ltxv2_backend`) must
    fit the path; None detects it. A component absent from the source is absent from the dict;
    `components` restricts what is loaded.
    """
    wanted = tuple(components) if components is not None else COMPONENTS
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    if _resolve_backend(path_or_repo, backend) == "official":
        return _load_official(path_or_repo, torch_dtype, wanted)
    return _load_diffusers(path_or_repo, torch_dtype, wanted)


def load_transformer(
    path_or_repo: str | os.PathLike, torch_dtype: torch.dtype | None = None, backend: str | None = None
) -> torch.nn.Module:
    """The `LTX2VideoTransformer3DModel` of an official checkpoint or a diffusers folder / Hub id."""
    out = load_components(path_or_repo, torch_dtype=torch_dtype, backend=backend, components=("transformer",))
    if "transformer" not in out:
        raise ValueError(f"{path_or_repo}: contains no LTX-2 transformer")
    return out["transformer"]


def load_required_components(path: str, names: list[str]) -> dict[str, torch.nn.Module]:
    """`load_components` for a job that cannot run without every one of `names` (clear error if absent)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file or folder {path!r} does not exist (check --vae / --ltxv2_model).")
    comps = load_components(path, components=list(names))
    missing = [n for n in names if n not in comps]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} weights; pass the checkpoint that contains them.")
    return comps


# ---------------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------------


def official_state_dict(**components: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The official single-file tensors (full checkpoint keys) of the given components."""
    tensors: dict[str, torch.Tensor] = {}
    for component, model in components.items():
        if component not in COMPONENTS:
            raise ValueError(f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}")
        down = len(getattr(model.config, "block_out_channels", ())) or 4
        state = model.state_dict()
        adapters = [k for k in state if "lora_" in k or ".base_layer." in k]
        if adapters:
            raise ValueError(
                f"{component} carries adapter weights ({_list(adapters, 5)}); merge or unload the LoRA first "
                "(`fuse_lora()` / `unload_lora()`), or save the LoRA on its own"
            )
        for name, tensor in state.items():
            key = _to_official(component, name, down)
            if key in tensors:
                raise CheckpointKeyError(f"two tensors map to the official key {key!r}")
            tensors[key] = tensor
        for key, tensor in getattr(model, OFFICIAL_EXTRAS_ATTR, {}).items():
            tensors.setdefault(key, tensor)
    return tensors


def save_official_checkpoint(path: str | os.PathLike, **components: torch.nn.Module) -> str:
    """Write `components` (same names as `load_components` returns) as one official LTX-2 checkpoint.

    The file has official key names and the ltx-core config JSON in its metadata, so ltx-core's model
    builders read every component in it. Returns the path.
    """
    from safetensors.torch import save_file

    if not components:
        raise ValueError("save_official_checkpoint needs at least one component, e.g. transformer=model")
    configs = {name: (type(m).__name__, dict(m.config)) for name, m in components.items()}
    base = next((getattr(m, OFFICIAL_CONFIG_ATTR) for m in components.values() if hasattr(m, OFFICIAL_CONFIG_ATTR)), None)
    config = official_config_from_diffusers(configs, base)
    tensors = official_state_dict(**components)
    seen: set[int] = set()
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen and tensor.numel():  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"config": json.dumps(config)})
    return str(path)


def official_configs(components: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """The official config JSON (as a dict) that `save_official_checkpoint` would write for `components`."""
    configs = {name: (type(m).__name__, dict(m.config)) for name, m in components.items()}
    return official_config_from_diffusers(configs)
