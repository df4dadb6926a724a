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

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from . import keymap
from .official_config import (
    check_transformer_section,
    has_diffusion_decoder,
    diffusers_configs_from_official,
    model_version_of,
    official_config_from_diffusers,
    transformer_config_from_official,
)

COMPONENTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")
# Subfolders of the official release that hold components (LTX-2.5 ships one file per component).
RELEASE_FOLDERS = ("diffusion_models", "text_encoders", "vae")
BACKENDS = ("official", "diffusers")

_FILE_PREFIX = {"vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder."}
# Present in released files, read by neither ltx-core nor diffusers.
_UNUSED_STATISTICS = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")

OFFICIAL_CONFIG_ATTR = "_ltxv2_official_config"
OFFICIAL_EXTRAS_ATTR = "_ltxv2_official_extras"


# Per-tensor scales beside e4m3 weights in pre-quantized fp8 files (official and ComfyUI spellings).
FP8_SCALE_SUFFIXES = (".weight_scale", ".input_scale", ".scale_weight", ".scale_input")


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
        if release_files(path):
            return "official"
        raise ValueError(
            f"{path}: folder has no model_index.json, config.json or component subfolders "
            f"({', '.join(COMPONENTS)}) and no official release subfolders ({', '.join(RELEASE_FOLDERS)}); "
            "not a model folder"
        )
    if str(path_or_repo).endswith(".safetensors"):
        raise FileNotFoundError(f"{path_or_repo}: no such checkpoint file")
    return "diffusers"  # a Hub repo id


def release_files(folder: str | os.PathLike) -> list[Path]:
    """The component files of a folder laid out like the official release (`diffusion_models/`,
    `text_encoders/`, `vae/`; upscalers, LoRAs and patches are not components), sorted; [] if none."""
    folder = Path(folder)
    subs = [folder / sub for sub in RELEASE_FOLDERS if (folder / sub).is_dir()]
    # A diffusers component folder (`vae/config.json` + weights) is not a release subfolder.
    files = sorted(f for sub in subs if not (sub / "config.json").is_file() for f in sub.glob("*.safetensors"))
    # The release offers two video VAEs; the convolutional one is what diffusers' classes hold.
    diffusion_vaes = [f for f in files if _has_diffusion_decoder(f)]
    if diffusion_vaes and len(diffusion_vaes) < sum(1 for f in files if _vae_config(f) is not None):
        files = [f for f in files if f not in diffusion_vaes]
    return files


def _vae_config(path: Path) -> dict[str, Any] | None:
    metadata, _ = _read_metadata_and_shapes(path) if path.suffix == ".safetensors" else ({}, {})
    return json.loads(metadata["config"]).get("vae") if "config" in metadata else None


def _has_diffusion_decoder(path: Path) -> bool:
    return has_diffusion_decoder(_vae_config(path) or {})


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


def _read_metadata_and_shapes(path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a .safetensors file, read from its header alone."""
    return _read_metadata_and_shapes(path)[1]


def read_official_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(ltx-core config from the metadata, {key: shape}) of an official checkpoint, without loading tensors."""
    metadata, shapes = _read_metadata_and_shapes(path)
    if "config" not in metadata:
        raise ValueError(
            f"{path}: no 'config' in the safetensors metadata, so this is not an official LTX-2 checkpoint "
            "(or it was stripped); pass a diffusers folder / Hub id, or a file written by ltx-core or "
            "ltxv2_diffusers.save_official_checkpoint"
        )
    config = json.loads(metadata["config"])
    if config.get("transformer") is not None:
        check_transformer_section(config["transformer"], where=str(path))
    return config, shapes


def transformer_weights_dtype(path_or_repo: str | os.PathLike, backend: str | None = None) -> str | None:
    """The dtype ("BF16", "F8_E4M3", ...) the official files of `path_or_repo` store the transformer blocks'
    weights in, from the safetensors header alone; None when it cannot be told here (diffusers folder, Hub)."""
    from safetensors import safe_open

    if _resolve_backend(path_or_repo, backend) != "official":
        return None
    for path in official_files(path_or_repo) or ():
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if ".transformer_blocks." in f".{key}" and key.endswith(".weight"):
                    weight = f.get_slice(key)
                    if len(weight.get_shape()) == 2:
                        return weight.get_dtype()
    return None


def read_transformer_config(path_or_repo: str | os.PathLike, backend: str | None = None) -> dict[str, Any] | None:
    """The diffusers transformer config of a local checkpoint without loading any tensor (None when the
    source is a Hub id or holds no transformer)."""
    if _resolve_backend(path_or_repo, backend) == "official":
        for path in official_files(path_or_repo) or ():
            section = _read_official_file(path).config.get("transformer")
            if section is not None:
                return transformer_config_from_official(section)
        return None
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


GEMMA_CONFIG_KEY = "gemma_config"  # metadata of an official text-encoder file (Gemma + text projection)
PROJECTION_PREFIX = "text_embedding_projection."
# Comfy-style split video VAE files name their tensors without the `vae.` prefix.
_BARE_VAE_PREFIXES = ("encoder.", "decoder.", "per_channel_statistics.")


@dataclasses.dataclass
class _OfficialFile:
    """One official file: its config sections and its LTX-2 tensors under their single-file key names."""

    path: Path
    config: dict[str, Any]
    keys: dict[str, str]  # single-file key -> key in this file
    shapes: dict[str, tuple[int, ...]]


def _read_official_file(path: Path) -> _OfficialFile:
    metadata, shapes = _read_metadata_and_shapes(path)
    if GEMMA_CONFIG_KEY in metadata:
        # The Gemma weights, tokenizer and assets are the text backend's; the projection is the connectors'.
        keys = {k: k for k in shapes if k.startswith(PROJECTION_PREFIX)}
        config = json.loads(metadata["config"]) if "config" in metadata else {}
    else:
        config, _ = read_official_header(path)
        keys = {k: k for k in shapes}
        if set(config) == {"vae"} and not any(k.startswith("vae.") for k in shapes):
            keys = {("vae." + k if k.startswith(_BARE_VAE_PREFIXES) else k): k for k in shapes}
    if config.get("transformer") is not None:
        check_transformer_section(config["transformer"], where=str(path))
    return _OfficialFile(path, config, keys, {k: shapes[f] for k, f in keys.items()})


def _merge_official_files(files: list[_OfficialFile]) -> tuple[dict[str, Any], dict[str, _OfficialFile]]:
    """(one config, {single-file key: file}) over several component files; a section or tensor given twice
    with different contents is an error naming both files."""
    config: dict[str, Any] = {}
    section_from: dict[str, Path] = {}
    owner: dict[str, _OfficialFile] = {}
    for f in files:
        for section, value in f.config.items():
            if section in config and config[section] != value:
                raise ValueError(
                    f"{f.path} and {section_from[section]} both configure {section!r}, differently; pass only one "
                    "of them (they are from different models or versions)"
                )
            config[section], section_from[section] = value, f.path
        for key in f.keys:
            if key in owner:
                raise CheckpointKeyError(
                    f"tensor {key!r} is in both {owner[key].path} and {f.path}; pass each component file once"
                )
            owner[key] = f
    return config, owner


def _load_official(paths: list[Path], torch_dtype, wanted: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    from accelerate import init_empty_weights
    from safetensors import safe_open

    files = [_read_official_file(Path(p)) for p in paths]
    config, owner = _merge_official_files(files)
    where = str(paths[0]) if len(paths) == 1 else ", ".join(str(p) for p in paths)
    shapes = {k: f.shapes[k] for k, f in owner.items()}
    by_component: dict[str, list[str]] = {}
    strays = []
    for key in shapes:
        component = official_key_component(key)
        if component is None:
            strays.append(key)
        else:
            by_component.setdefault(component, []).append(key)
    if strays:
        raise CheckpointKeyError(f"{where}: unexpected keys that belong to no LTX-2 component: {_list(strays)}")
    if "connectors" in wanted and by_component.get("connectors") and not any(
        k.startswith(PROJECTION_PREFIX) for k in by_component["connectors"]
    ):
        raise CheckpointKeyError(
            f"{where}: the text connectors need the text projection ({PROJECTION_PREFIX}*), which LTX-2.5 keeps "
            "in the text-encoder file (text_encoders/gemma4-...-with-proj-...safetensors): pass that file too"
        )
    encoder_only = has_diffusion_decoder(config.get("vae") or {})
    if encoder_only and by_component.get("vae"):
        # Its diffusion decoder is no diffusers module: the encoder (all caching needs) and the statistics load.
        by_component["vae"] = [k for k in by_component["vae"] if not k.startswith("vae.decoder.")]
    configs = diffusers_configs_from_official(config, shapes)

    out: dict[str, torch.nn.Module] = {}
    with contextlib.ExitStack() as stack:
        handles = {f.path: stack.enter_context(safe_open(str(f.path), framework="pt")) for f in files}

        def tensor(key: str) -> torch.Tensor:
            f = owner[key]
            return handles[f.path].get_tensor(f.keys[key])

        for component in wanted:
            keys = by_component.get(component)
            if not keys:
                continue
            if component not in configs:
                raise ValueError(f"{where}: has {component} weights but no config metadata describes them")
            class_name, kwargs = configs[component]
            # Parameters on meta, buffers computed for real: buffers that are not in the file stay valid.
            with init_empty_weights(include_buffers=False):
                model = _diffusers_class(class_name)(**kwargs)
            down = len(kwargs.get("block_out_channels", ())) or 4
            if component == "vae" and encoder_only:
                model.decoder = EncoderOnlyDecoder(where)
            expected = set(model.state_dict())
            extras = {k: tensor(k) for k in keys if _is_unused_statistic(component, k)}
            names = {_from_official(component, k, down): k for k in keys if k not in extras}
            missing, unexpected = expected - set(names), set(names) - expected
            scales = sorted(names[n] for n in unexpected if n.endswith(FP8_SCALE_SUFFIXES))
            if scales:
                raise CheckpointKeyError(
                    f"{where}: a pre-quantized fp8 checkpoint (e4m3 weights with scales, e.g. {scales[0]}), which "
                    "training does not read: pass the bf16 checkpoint (e.g. ltx-2-19b-dev.safetensors); "
                    "--fp8_base trains with fp8 base weights quantized from it, and small GPUs are planned for "
                    "(--memory_budget)")
            if missing or unexpected:
                files_of = sorted({str(owner[k].path) for k in keys})
                raise CheckpointKeyError(
                    f"{', '.join(files_of)}: {component} ({class_name}) does not match the file. "
                    f"Missing from the file: {_list(missing) or 'none'}. "
                    f"Unexpected in the file: {_list(names[n] for n in unexpected) or 'none'}."
                )
            state = {}
            for name, key in names.items():
                t = tensor(key)
                state[name] = t.to(torch_dtype) if torch_dtype is not None and t.is_floating_point() else t
            model.load_state_dict(state, strict=True, assign=True)
            del state
            if torch_dtype is not None:
                model.to(torch_dtype)
            setattr(model, OFFICIAL_CONFIG_ATTR, config)
            setattr(model, OFFICIAL_EXTRAS_ATTR, extras)
            out[component] = model.eval()
    return out


class EncoderOnlyDecoder(torch.nn.Module):
    """Stands for the diffusion decoder of a video VAE file: it refuses to decode, naming what to pass."""

    def __init__(self, source: str):
        super().__init__()
        self.source = source

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            f"{self.source}: this video VAE's decoder is a diffusion decoder, which diffusers cannot run; it encodes "
            "(caching) but cannot decode (previews): pass the convolutional one, vae/*-video-vae-conv-*.safetensors"
        )


def is_encoder_only(vae: torch.nn.Module) -> bool:
    """True for a video VAE loaded from a diffusion-decoder file (see `EncoderOnlyDecoder`)."""
    return isinstance(getattr(vae, "decoder", None), EncoderOnlyDecoder)


def official_files(path_or_repo: str | os.PathLike, *more_paths: str | os.PathLike) -> list[Path] | None:
    """The official component files `path_or_repo` (+ `more_paths`) stand for: a single file, several
    component files, or release-like folders; None when the source is a diffusers folder or Hub id."""
    out: list[Path] = []
    for p in (path_or_repo, *more_paths):
        path = Path(p)
        if path.is_dir() and release_files(path):
            out.extend(release_files(path))
        elif path.is_file() or str(p).endswith(".safetensors"):
            if detect_layout(path) != "official":
                raise ValueError(f"{path}: expected an official LTX-2 .safetensors file")
            out.append(path)
        elif more_paths:
            raise ValueError(f"{p}: several sources must each be an official .safetensors file or a release folder "
                             f"({', '.join(RELEASE_FOLDERS)})")
        else:
            return None
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
    *more_paths: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    backend: str | None = None,
    components: Iterable[str] | None = None,
) -> dict[str, torch.nn.Module]:
    """Load `{transformer, connectors, vae, audio_vae, vocoder}` (diffusers classes) from official files or a
    diffusers folder / Hub id.

    Official sources (config from the metadata, no network): one single-file checkpoint (LTX-2.0 / 2.3), or
    several component files (LTX-2.5: transformer with the connectors; text encoder with
    `text_embedding_projection.*`; video VAE; audio VAE + vocoder), or a folder laid out like the release
    (`diffusion_models/`, `text_encoders/`, `vae/`); `more_paths` adds files or folders. `backend`
    ("official" | "diffusers", the old `--ltxv2_backend`) must fit the path; None detects it. A component
    absent from the sources is absent from the dict; `components` restricts what is loaded. Keys are strict:
    a missing or unexpected tensor is an error naming it.
    """
    wanted = tuple(components) if components is not None else COMPONENTS
    unknown = [c for c in wanted if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown}; choose from {', '.join(COMPONENTS)}")
    if more_paths:
        if backend == "diffusers":
            raise ValueError("--ltxv2_backend diffusers takes one folder or Hub id, not several files")
        return _load_official(official_files(path_or_repo, *more_paths), torch_dtype, wanted)
    if _resolve_backend(path_or_repo, backend) == "official":
        return _load_official(official_files(path_or_repo), torch_dtype, wanted)
    return _load_diffusers(path_or_repo, torch_dtype, wanted)


def load_transformer(
    path_or_repo: str | os.PathLike,
    *more_paths: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    backend: str | None = None,
) -> torch.nn.Module:
    """The `LTX2VideoTransformer3DModel` of official files / a release folder or a diffusers folder / Hub id."""
    out = load_components(path_or_repo, *more_paths, torch_dtype=torch_dtype, backend=backend,
                          components=("transformer",))
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
    if not components:
        raise ValueError("save_official_checkpoint needs at least one component, e.g. transformer=model")
    configs = {name: (type(m).__name__, dict(m.config)) for name, m in components.items()}
    base = next((getattr(m, OFFICIAL_CONFIG_ATTR) for m in components.values() if hasattr(m, OFFICIAL_CONFIG_ATTR)), None)
    config = official_config_from_diffusers(configs, base)
    metadata = {"config": json.dumps(config)}
    if "transformer" in components:
        # Official 2.5 files carry it; loaders that pick defaults by version read it.
        metadata["model_version"] = model_version_of(components["transformer"].config)
    _save_tensors(Path(path), official_state_dict(**components), metadata)
    return str(path)


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    seen: set[int] = set()
    out = {}
    for key, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        if tensor.untyped_storage().data_ptr() in seen and tensor.numel():  # safetensors refuses shared storage
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        out[key] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside and renamed, so an interrupted write never leaves a truncated component file.
    tmp = path.with_name(path.name + ".tmp")
    save_file(out, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def save_official_release(
    folder: str | os.PathLike, name: str = "ltx", **components: torch.nn.Module,
) -> list[Path]:
    """Write `components` split like the official LTX-2.5 release, under `folder`:
    `diffusion_models/{name}-transformer.safetensors` (transformer + text connectors),
    `text_encoders/{name}-text-projection.safetensors` (the text projection; `text/gemma_file.py`
    `write_gemma_file` packs it with a Gemma as the release does), `vae/{name}-video-vae-conv.safetensors` (bare VAE keys) and `vae/{name}-audio-vae.safetensors`
    (audio VAE + vocoder). `load_components(folder)` reads it back. Returns the files written."""
    folder = Path(folder)
    config = official_configs(components)
    written: list[Path] = []

    def write(path: Path, tensors: dict[str, torch.Tensor], sections: tuple[str, ...], extra=None) -> None:
        meta = {"config": json.dumps({k: config[k] for k in sections if k in config})}
        meta.update(extra or {})
        _save_tensors(path, tensors, meta)
        written.append(path)

    groups = {
        "diffusion_models": ("transformer", "connectors"), "vae_video": ("vae",), "vae_audio": ("audio_vae", "vocoder"),
    }
    picked = {g: {c: components[c] for c in names if c in components} for g, names in groups.items()}
    if picked["diffusion_models"]:
        tensors = official_state_dict(**picked["diffusion_models"])
        projection = {k: tensors.pop(k) for k in list(tensors) if k.startswith(PROJECTION_PREFIX)}
        version = {"model_version": model_version_of(components["transformer"].config)} if "transformer" in components else {}
        write(folder / "diffusion_models" / f"{name}-transformer.safetensors", tensors, ("transformer",), version)
        if projection:
            write(folder / "text_encoders" / f"{name}-text-projection.safetensors", projection, ("transformer",))
    if picked["vae_video"]:
        tensors = {k[len("vae."):]: v for k, v in official_state_dict(**picked["vae_video"]).items()}
        write(folder / "vae" / f"{name}-video-vae-conv.safetensors", tensors, ("vae",))
    if picked["vae_audio"]:
        write(folder / "vae" / f"{name}-audio-vae.safetensors", official_state_dict(**picked["vae_audio"]),
              ("audio_vae", "vocoder"))
    return written


def official_configs(components: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """The official config JSON (as a dict) that `save_official_checkpoint` would write for `components`."""
    configs = {name: (type(m).__name__, dict(m.config)) for name, m in components.items()}
    return official_config_from_diffusers(configs)
