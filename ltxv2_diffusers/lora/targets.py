"""Which linear layers of the transformer a LoRA trains, per training mode.

Names are resolved to full module paths of the diffusers `LTX2VideoTransformer3DModel` here,
because PEFT matches `target_modules` by suffix: a bare `to_q` would hit the video, audio and
cross-modal attentions alike and break the modality guarantees below.

- `video`: only modules whose name has no `audio` (cross-modal `audio_to_video_attn` /
  `video_to_audio_attn` excluded), so the audio branch of the model is untouched.
- `audio`: only audio modules (`audio` in the name, no `video`), so the video branch is untouched.
- `av`: both branches plus the cross-modal attentions.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from ..modes import LtxMode
from ..models.keymap import transformer_key_from_official, transformer_key_to_official
from .keys import linear_module_names

BLOCKS_PREFIX = "transformer_blocks."
DEFAULT_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
FF_PROJECTIONS = ("ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2")


@dataclass(frozen=True)
class TargetOptions:
    """How to pick LoRA targets inside the transformer blocks.

    projections: dot-bounded module-name suffixes inside the blocks (`to_out.0`, `attn1.to_q`, or full names).
    include_ff: also the feed-forward layers of the trained branches.
    include_patterns / exclude_patterns: regexes searched in the diffusers and the official name;
      a module must match one include pattern (if any are given) and no exclude pattern.
    modules: explicit full module names (diffusers or official spelling); replaces all of the above.
    """

    projections: tuple[str, ...] = DEFAULT_PROJECTIONS
    include_ff: bool = False
    include_patterns: tuple[str, ...] = ()
    exclude_patterns: tuple[str, ...] = ()
    modules: tuple[str, ...] | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)


# Keys of --network_args understood here; anything else is returned to the caller in `extra`.
_LIST_KEYS = {"target_modules", "include_patterns", "exclude_patterns", "modules"}
_BOOL_KEYS = {"include_ff"}


def _parse_value(key: str, raw: object) -> object:
    if not isinstance(raw, str):
        return raw
    text = raw.strip()
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    if key in _LIST_KEYS:
        # Unquoted comma lists such as `target_modules=to_q,to_k` are the common spelling.
        return [part.strip() for part in text.split(",") if part.strip()]
    if key in _BOOL_KEYS and text.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return text.lower() in {"true", "1", "yes"}
    return text


def _as_str_tuple(key: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"--network_args {key}=...: expected a list of names, got {value!r}")
    return tuple(value)


def target_options_from_network_args(network_args: Mapping[str, object] | Iterable[str] | None) -> TargetOptions:
    """Build `TargetOptions` from `--network_args` (a `key=value` list or a dict of strings).

    Understood keys: `target_modules` (projection suffixes, e.g. `to_q,to_k,to_v,to_out.0,ff.net.2`),
    `include_ff`, `include_patterns`, `exclude_patterns` (regex lists, Python-literal or comma
    separated), `modules` (explicit full module names). Other keys are kept in `.extra` for the
    trainer (e.g. `loraplus_lr_ratio`).
    """
    if network_args is None:
        items: dict[str, object] = {}
    elif isinstance(network_args, Mapping):
        items = dict(network_args)
    else:
        items = {}
        for item in network_args:
            if "=" not in item:
                raise ValueError(f"--network_args {item!r}: expected key=value")
            key, value = item.split("=", 1)
            items[key.strip()] = value
    parsed = {key: _parse_value(key, value) for key, value in items.items()}
    kwargs: dict[str, object] = {}
    if "target_modules" in parsed:
        kwargs["projections"] = _as_str_tuple("target_modules", parsed.pop("target_modules"))
    if "include_ff" in parsed:
        value = parsed.pop("include_ff")
        if not isinstance(value, bool):
            raise ValueError(f"--network_args include_ff={value!r}: expected True or False")
        kwargs["include_ff"] = value
    for key in ("include_patterns", "exclude_patterns", "modules"):
        if key in parsed:
            kwargs[key] = _as_str_tuple(key, parsed.pop(key))
    return TargetOptions(**kwargs, extra=parsed)


def mode_allows(name: str, mode: LtxMode | str) -> bool:
    """Whether a module (diffusers name) may carry a LoRA in `mode`."""
    mode = LtxMode(mode)
    if mode is LtxMode.VIDEO:
        return "audio" not in name
    if mode is LtxMode.AUDIO:
        return "audio" in name and "video" not in name
    return True


def _has_suffix(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def _search_any(patterns: Iterable[re.Pattern], name: str) -> bool:
    official = transformer_key_to_official(name)
    return any(p.search(name) or p.search(official) for p in patterns)


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern]:
    out = []
    for pattern in patterns:
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ValueError(f"--network_args {what}: {pattern!r} is not a valid regex ({exc})") from None
    return out


def select_lora_targets(
    transformer: torch.nn.Module, mode: LtxMode | str, options: TargetOptions | None = None
) -> list[str]:
    """Full diffusers module names of the linear layers a LoRA trains in `mode` (sorted by model order)."""
    mode = LtxMode(mode)
    options = options or TargetOptions()
    linears = linear_module_names(transformer)
    if options.modules is not None:
        return _explicit_targets(linears, mode, options.modules)

    projections = tuple(options.projections) + (FF_PROJECTIONS if options.include_ff else ())
    includes = _compile(options.include_patterns, "include_patterns")
    excludes = _compile(options.exclude_patterns, "exclude_patterns")
    chosen = []
    for name in linears:
        if not name.startswith(BLOCKS_PREFIX) or not mode_allows(name, mode):
            continue
        # Dot-bounded suffixes: `attn1.to_q` never hits `audio_attn1.to_q`, full names work too.
        if not any(_has_suffix(name, p) for p in projections):
            continue
        if includes and not _search_any(includes, name):
            continue
        if excludes and _search_any(excludes, name):
            continue
        chosen.append(name)
    if not chosen:
        raise ValueError(
            f"no LoRA targets in {mode.value} mode for projections {list(projections)} "
            f"(include {list(options.include_patterns)}, exclude {list(options.exclude_patterns)}); "
            "check --network_args target_modules / include_patterns / exclude_patterns."
        )
    return chosen


def _explicit_targets(linears: list[str], mode: LtxMode, modules: Iterable[str]) -> list[str]:
    known = set(linears)
    wanted = []
    for raw in modules:
        name = raw if raw in known else transformer_key_from_official(raw)
        if name not in known:
            raise ValueError(
                f"--network_args modules: {raw!r} is not a linear layer of the transformer "
                f"(examples of valid names: {', '.join(list(linears)[-3:])})"
            )
        if not mode_allows(name, mode):
            raise ValueError(
                f"--network_args modules: {raw!r} belongs to the other modality; {mode.value} mode "
                "must leave it untouched. Drop it or use --ltx_mode av."
            )
        wanted.append(name)
    order = {name: i for i, name in enumerate(linears)}
    return sorted(set(wanted), key=order.__getitem__)
