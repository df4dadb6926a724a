"""The plugin manager (plain pluggy) and the typed functions core code calls hooks through.

Plugins load lazily, once, on the first call that needs them (never at import): the built-ins of
``default_plugins/`` first, then the entry points of the group ``ltxv2_diffusers`` that
``--plugins`` allows (:func:`configure`). Each plugin's hook functions are checked and wrapped once,
at registration (``plugin_rules.guarded_hooks``), so that an exception or a malformed answer names
the plugin and the hook (:class:`PluginError`); the facade functions below add the checks that
need every plugin's answer.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import textwrap
import threading
from collections.abc import Callable, Iterable
from typing import Any, Mapping

import pluggy

from ltxv2_diffusers import hookspecs
from ltxv2_diffusers.hookspecs import PROJECT_NAME, hookimpl
from ltxv2_diffusers.plugin_rules import PluginError, PluginPolicy, WeightingScheme, guarded_hooks, hook_names

ENTRY_POINT_GROUP = PROJECT_NAME
BUILTIN_NAMES = ("default.weighting", "default.sigmas", "default.audio_loss", "default.text_backends")

__all__ = [
    "ENTRY_POINT_GROUP", "PluginError", "PluginInfo", "PluginPolicy", "hookimpl", "get_plugin_manager", "configure",
    "register_plugin", "unregister_plugin", "plugin_infos", "describe_plugins", "hook_names", "implemented",
    "weighting_schemes", "text_encoder_backends", "sample_sigmas", "audio_loss", "extra_losses", "transform_batch",
    "add_arguments", "on_train_start", "on_step_end", "on_save", "on_train_end",
]


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """One row of ``--list_plugins``."""

    name: str
    source: str  # "built-in", "manual", or the distribution providing the entry point
    version: str | None
    hooks: tuple[str, ...]
    status: str  # "loaded", "blocked", or why an installed entry point was not loaded


_pm = pluggy.PluginManager(PROJECT_NAME)
_pm.add_hookspecs(hookspecs)
_lock = threading.RLock()
_loaded = False
_policy = PluginPolicy()
_registered: dict[str, tuple[object, str, str | None]] = {}  # name -> (plugin as given, source, version)
_skipped: dict[str, tuple[str, str]] = {}  # installed but not loaded -> (source, why)
_registries: dict[str, dict[str, Any]] = {}  # collected once until the set of plugins changes


def _register(plugin: object, name: str, source: str, version: str | None = None) -> str | None:
    if any(p is plugin for p, _, _ in _registered.values()):
        raise PluginError(name, None, "this plugin object is already registered")
    try:
        registered = _pm.register(guarded_hooks(_pm, plugin, name), name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:
        raise PluginError(name, None, str(exc)) from exc
    if registered is not None:  # None: the name is blocked
        _registered[name] = (plugin, source, version)
        _registries.clear()
    return registered


def _load(policy: PluginPolicy) -> None:
    _skipped.clear()
    for name in policy.block:
        _pm.set_blocked(name)
    # the built-ins' real code needs torch: it loads with the plugins, not with this module
    from ltxv2_diffusers.default_plugins import audio_loss, sigmas, text_backends, weighting

    for name, module in zip(BUILTIN_NAMES, (weighting, sigmas, audio_loss, text_backends)):
        if name in policy.block:
            _skipped[name] = ("built-in", "blocked")
        elif _pm.get_plugin(name) is None:
            _register(module, name, "built-in")
    eps = sorted({ep.name: ep for ep in reversed(list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)))}
                 .values(), key=lambda ep: ep.name)  # one distribution may be on sys.path twice
    if missing := (policy.allow or set()) - {ep.name for ep in eps} - set(BUILTIN_NAMES):
        raise PluginError(None, None, f"--plugins names {', '.join(sorted(missing))}, not installed (installed "
                                      f"entry points in group {ENTRY_POINT_GROUP!r}: {', '.join(ep.name for ep in eps) or 'none'})")
    for ep in eps:
        dist = getattr(ep, "dist", None)
        source = dist.metadata["Name"] if dist is not None else ep.value
        why = ("blocked" if ep.name in policy.block else "off (autoload disabled)" if not policy.autoload
               else "off (not in --plugins)" if policy.allow is not None and ep.name not in policy.allow else None)
        if why:
            _skipped[ep.name] = (source, why)
        elif _pm.get_plugin(ep.name) is None:
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(ep.name, None, f"entry point {ep.value!r} of {source} failed to import: "
                                                 f"{type(exc).__name__}: {exc}; uninstall it or block it with "
                                                 f"--plugins=-{ep.name}") from exc
            _register(plugin, ep.name, source, dist.version if dist is not None else None)


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, with built-in and allowed installed plugins loaded (once)."""
    global _loaded
    if not _loaded:
        with _lock:
            if not _loaded:
                _load(_policy)
                _loaded = True
    return _pm


def __getattr__(name: str):
    if name == "pm":  # `plugins.pm` is the loaded manager, resolved lazily so importing loads nothing
        return get_plugin_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def configure(plugins_arg: str | Iterable[str] | None = None) -> PluginPolicy:
    """Apply a ``--plugins`` value and reload; hand-registered plugins stay unless blocked."""
    global _loaded, _policy
    policy = PluginPolicy.parse(plugins_arg)
    with _lock:
        for name, (_, source, _) in list(_registered.items()):
            if source != "manual" or name in policy.block:
                unregister_plugin(name)
        for name in _policy.block:
            _pm.unblock(name)
        _policy, _loaded = policy, False
        get_plugin_manager()
    return policy


def register_plugin(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin module or object by hand (tests, notebooks); returns its name, or None
    when the name is blocked. Unknown hooks fail here with :class:`PluginError`."""
    get_plugin_manager()
    with _lock:
        return _register(plugin, name or _pm.get_canonical_name(plugin), "manual")


def unregister_plugin(name: str) -> None:
    """Remove a registered plugin by name."""
    with _lock:
        if _pm.get_plugin(name) is None:
            raise PluginError(name, None, "is not registered")
        _pm.unregister(name=name)
        _registered.pop(name, None)
        _registries.clear()


def plugin_infos() -> list[PluginInfo]:
    """Every registered plugin (built-ins first) and every installed entry point left out."""
    pm = get_plugin_manager()
    rows = [PluginInfo(name, *_registered.get(name, (None, "manual", None))[1:],
                       tuple(sorted(c.name for c in pm.get_hookcallers(plugin) or [])), "loaded")
            for name, plugin in pm.list_name_plugin() if plugin is not None]
    rows += [PluginInfo(name, source, None, (), why) for name, (source, why) in _skipped.items()]
    order = {"built-in": 0, "manual": 2}
    return sorted(rows, key=lambda r: (r.status != "loaded", order.get(r.source, 1), r.name))


def describe_plugins() -> str:
    """The ``--list_plugins`` table: every plugin, where it comes from and the hooks it implements."""
    table = [("NAME", "SOURCE", "STATUS", "HOOKS")] + [
        (r.name, r.source + (f" {r.version}" if r.version else ""), r.status,
         ", ".join(h.removeprefix("ltxv2_") for h in r.hooks) or "-") for r in plugin_infos()]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [f"Plugins (entry-point group {ENTRY_POINT_GROUP!r}; autoload {'on' if _policy.autoload else 'off'}"
             + (f"; blocked: {', '.join(sorted(_policy.block))}" if _policy.block else "") + ")"]
    for row in table:
        prefix = "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  "
        wrapped = textwrap.wrap(row[3], width=max(30, 100 - len(prefix)), break_on_hyphens=False)
        lines += [prefix + wrapped[0]] + [" " * len(prefix) + more for more in wrapped[1:]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# typed facade: core code calls hooks only through these


def _registry(hook: str, what: str, wrap: Callable[[str, Any, str], Any]) -> dict[str, Any]:
    """{name: wrap(name, obj, plugin)} of a ``register(name, obj)`` hook, collected once until the
    plugins change. Installed plugins (called first) replace built-ins; two installed ones clash."""
    get_plugin_manager()
    with _lock:
        if hook not in _registries:
            found: dict[str, tuple[Any, str]] = {}

            def register(name: str, obj: Any, plugin: str = "manual") -> None:
                if not isinstance(name, str) or not name:
                    raise TypeError(f"{what} name must be a non-empty string, got {name!r}")
                if not callable(obj):
                    raise TypeError(f"{what} {name!r} must be callable, got {type(obj).__name__}")
                if name in found and plugin in BUILTIN_NAMES:
                    return  # an installed plugin already replaced this built-in
                if name in found:
                    raise ValueError(f"{what} {name!r} is registered by both {found[name][1]!r} and {plugin!r}; "
                                     f"block one with --plugins=-<name>")
                found[name] = (obj, plugin)

            getattr(_pm.hook, hook)(register=register)
            _registries[hook] = {name: wrap(name, obj, plugin) for name, (obj, plugin) in found.items()}
        return dict(_registries[hook])


def weighting_schemes() -> dict[str, Callable[[Any, str], Any]]:
    """Every weighting scheme: name -> :class:`WeightingScheme` (``fn(sigmas, modality) -> weights``,
    checked, naming its plugin on failure; the registered function is ``fn.__wrapped__``)."""
    return _registry("ltxv2_register_weighting_schemes", "weighting scheme", WeightingScheme)


def text_encoder_backends() -> dict[str, Callable[..., Any]]:
    """Every registered text-encoder backend: name -> factory."""
    return _registry("ltxv2_register_text_encoder_backends", "text encoder backend", lambda name, fn, plugin: fn)


def sample_sigmas(batch_size: int, num_tokens: int, modality: str, args: Any, generator: Any = None):
    """Training sigmas ``[batch_size]`` or ``[batch_size, num_tokens]`` in [0, 1] for one modality
    (first plugin answering wins; the built-in is the scheduler's sampler); None if none answers."""
    return get_plugin_manager().hook.ltxv2_sample_sigmas(
        batch_size=batch_size, num_tokens=num_tokens, modality=modality, args=args, generator=generator)


def audio_loss(pred, target, mask, sigmas, batch, args):
    """The audio loss term, a scalar tensor (first plugin answering wins; built-in: masked MSE)."""
    result = get_plugin_manager().hook.ltxv2_audio_loss(
        pred=pred, target=target, mask=mask, sigmas=sigmas, batch=batch, args=args)
    return None if result is None else result.reshape(())


def extra_losses(outputs, batch, args) -> list[tuple[str, Any]]:
    """Every plugin's extra loss terms as ``(name, loss)``; a name returned twice is an error."""
    terms = [tuple(pair) for result in get_plugin_manager().hook.ltxv2_extra_losses(
        outputs=outputs, batch=batch, args=args) for pair in result]
    names = [name for name, _ in terms]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise PluginError(None, "ltxv2_extra_losses", f"loss {twice[0]!r} is returned twice; rename one")
    return terms


def transform_batch(batch, args):
    """The batch after every plugin's transform, chained in call order (None = unchanged)."""
    for impl in reversed(get_plugin_manager().hook.ltxv2_transform_batch.get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            raise PluginError(impl.plugin_name, "ltxv2_transform_batch", "hook wrappers cannot chain batches")
        call = {"batch": batch, "args": args}
        result = impl.function(*[call[a] for a in impl.argnames])
        batch = batch if result is None else result
    return batch


def conditioning_masks(batch, args, generator) -> dict[str, Any]:
    """Every plugin's clean-token masks per modality, OR-ed (empty when no plugin adds any)."""
    merged: dict[str, Any] = {}
    for result in get_plugin_manager().hook.ltxv2_conditioning_masks(batch=batch, args=args, generator=generator):
        if not isinstance(result, Mapping) or not set(result) <= {"video", "audio"}:
            raise PluginError(None, "ltxv2_conditioning_masks",
                              f"must return a dict with 'video' and/or 'audio' masks or None, got {result!r:.200}")
        for name, mask in result.items():
            if mask is not None:
                merged[name] = mask if name not in merged else merged[name] | mask
    return merged


def add_arguments(parser) -> None:
    """Let every plugin add its command-line flags."""
    get_plugin_manager().hook.ltxv2_add_arguments(parser=parser)


def implemented(hook: str) -> bool:
    """Whether any registered plugin implements `hook` (e.g. ``"ltxv2_on_step_end"``)."""
    return bool(getattr(get_plugin_manager().hook, hook).get_hookimpls())


def on_train_start(args, model) -> None:
    """Tell plugins training starts."""
    get_plugin_manager().hook.ltxv2_on_train_start(args=args, model=model)


def on_step_end(step: int, logs: dict) -> None:
    """Tell plugins an optimizer step finished (they may add entries to ``logs``)."""
    get_plugin_manager().hook.ltxv2_on_step_end(step=step, logs=logs)


def on_save(path, step: int) -> None:
    """Tell plugins a checkpoint was written."""
    get_plugin_manager().hook.ltxv2_on_save(path=path, step=step)


def on_train_end(output_dir) -> None:
    """Tell plugins training finished."""
    get_plugin_manager().hook.ltxv2_on_train_end(output_dir=output_dir)
