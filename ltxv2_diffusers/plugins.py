"""The plugin manager and the typed functions core code calls hooks through.

Loading is lazy and happens once, on the first call that needs plugins (never at import):
built-in plugins (``ltxv2_diffusers.default_plugins``) first, then every entry point of the group
``ltxv2_diffusers`` that the policy allows. The policy comes from :func:`configure` (the
``--plugins`` flag) and the environment (``LTXV2_DISABLE_PLUGINS=1``,
``LTXV2_BLOCK_PLUGINS=a,b``). Every exception raised inside a plugin reaches the caller as a
:class:`PluginError` naming the plugin and the hook.
"""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import functools
import importlib
import importlib.metadata
import os
import textwrap
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pluggy

from ltxv2_diffusers import hookspecs
from ltxv2_diffusers.hookspecs import PROJECT_NAME, hookimpl

ENTRY_POINT_GROUP = PROJECT_NAME
DISABLE_ENV = "LTXV2_DISABLE_PLUGINS"
BLOCK_ENV = "LTXV2_BLOCK_PLUGINS"

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginInfo",
    "PluginPolicy",
    "hookimpl",
    "get_plugin_manager",
    "configure",
    "register_plugin",
    "unregister_plugin",
    "plugin_infos",
    "describe_plugins",
    "hook_names",
    "weighting_schemes",
    "text_encoder_backends",
    "sample_sigmas",
    "audio_loss",
    "extra_losses",
    "transform_batch",
    "add_arguments",
    "on_train_start",
    "on_step_end",
    "on_save",
    "on_train_end",
]


class PluginError(RuntimeError):
    """A plugin failed to load, validate or run; ``plugin`` and ``hook`` say which and where."""

    def __init__(self, plugin: str | None, hook: str | None, message: str):
        self.plugin = plugin
        self.hook = hook
        where = f"plugin {plugin!r}" if plugin else "plugins"
        if hook:
            where += f" in hook {hook}"
        super().__init__(f"{where}: {message}")


# --------------------------------------------------------------------------------------------
# policy (--plugins and the environment)


@dataclasses.dataclass(frozen=True)
class PluginPolicy:
    """Which third-party plugins load: ``autoload`` off loads none; ``allow`` (None = all)
    restricts entry points by name; ``block`` names plugins (built-in ones too) never registered."""

    autoload: bool = True
    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, plugins_arg: str | Iterable[str] | None) -> PluginPolicy:
        """Parse a ``--plugins`` value: ``all`` (default), ``none``, ``a,b`` (allow only these
        entry points) and/or ``-name`` (block a plugin); a string or a list of such strings."""
        if plugins_arg is None:
            return cls()
        items = [plugins_arg] if isinstance(plugins_arg, str) else list(plugins_arg)
        tokens = [t for item in items for t in str(item).replace(",", " ").split()]
        autoload, allow, block = True, set(), set()
        for token in tokens:
            if token == "all":
                continue
            if token == "none":
                autoload = False
            elif token.startswith("-") and len(token) > 1:
                block.add(token[1:])
            elif token.startswith("-") or token.startswith("+"):
                raise ValueError(f"--plugins: {token!r} is not a plugin name")
            else:
                allow.add(token)
        if not autoload and allow:
            raise ValueError(
                f"--plugins: 'none' cannot be combined with plugin names ({', '.join(sorted(allow))}); "
                "use 'none' alone, or list only the plugins to load"
            )
        return cls(autoload=autoload, allow=frozenset(allow) or None, block=frozenset(block))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PluginPolicy:
        """The policy ``LTXV2_DISABLE_PLUGINS`` and ``LTXV2_BLOCK_PLUGINS`` ask for."""
        environ = os.environ if environ is None else environ
        disable = environ.get(DISABLE_ENV, "").strip().lower()
        if disable not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{DISABLE_ENV}={disable!r}: use 1 to disable plugin autoloading, 0 to allow it")
        block = {n.strip() for n in environ.get(BLOCK_ENV, "").split(",") if n.strip()}
        return cls(autoload=disable not in ("1", "true", "yes", "on"), block=frozenset(block))

    def merged(self, other: PluginPolicy) -> PluginPolicy:
        """Both restrictions at once (blocks add up; an allow list must pass both)."""
        if self.allow is None or other.allow is None:
            allow = self.allow if other.allow is None else other.allow
        else:
            allow = self.allow & other.allow
        return PluginPolicy(self.autoload and other.autoload, allow, self.block | other.block)


# --------------------------------------------------------------------------------------------
# the manager

_current_plugin: contextvars.ContextVar[str | None] = contextvars.ContextVar("ltxv2_current_plugin", default=None)
# hook name -> plugin whose implementation last returned a non-None value (names first-result answers).
_answered_by: dict[str, str] = {}


def _guard(function: Callable[..., Any], plugin_name: str, hook_name: str) -> Callable[..., Any]:
    """Wrap a hookimpl so its exceptions name the plugin and the hook."""

    @functools.wraps(function)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        token = _current_plugin.set(plugin_name)
        try:
            result = function(*args, **kwargs)
            if result is not None:
                _answered_by[hook_name] = plugin_name
            return result
        except PluginError:
            raise  # already names the plugin that failed (e.g. a nested facade call)
        except Exception as exc:
            raise PluginError(plugin_name, hook_name, f"{type(exc).__name__}: {exc}") from exc
        finally:
            _current_plugin.reset(token)

    return guarded


class _Manager(pluggy.PluginManager):
    """pluggy's manager, calling each plain hookimpl through :func:`_guard`.

    Hook wrappers run unguarded: their generator protocol cannot be wrapped safely.
    """

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self._guarded: dict[int, tuple[pluggy.HookImpl, pluggy.HookImpl]] = {}

    def guarded_impl(self, impl: pluggy.HookImpl, hook_name: str) -> pluggy.HookImpl:
        if impl.wrapper or impl.hookwrapper:
            return impl
        cached = self._guarded.get(id(impl))
        if cached is None or cached[0] is not impl:
            guarded = pluggy.HookImpl(impl.plugin, impl.plugin_name, _guard(impl.function, impl.plugin_name, hook_name), impl.opts)
            cached = self._guarded[id(impl)] = (impl, guarded)
        return cached[1]

    def _hookexec(self, hook_name, methods, kwargs, firstresult):
        methods = [self.guarded_impl(m, hook_name) for m in methods]
        return super()._hookexec(hook_name, methods, kwargs, firstresult)

    def unregister(self, plugin=None, name=None):
        removed = super().unregister(plugin, name)
        self._guarded = {k: v for k, v in self._guarded.items() if v[0].plugin is not removed}
        return removed


_pm = _Manager()
_pm.add_hookspecs(hookspecs)
_lock = threading.RLock()
_loaded = False
_flag_policy = PluginPolicy()
# name -> (source, version) for every plugin this module registered; "manual" ones survive configure().
_sources: dict[str, tuple[str, str | None]] = {}
_skipped: dict[str, tuple[str, str]] = {}  # plugins found but not loaded -> (source, why)


def hook_names() -> list[str]:
    """Every hook name, in hookspecs.py order."""
    return [n for n in vars(hookspecs) if n.startswith("ltxv2_") and callable(getattr(hookspecs, n))]


def _validate(plugin: object, name: str) -> None:
    """Fail loudly on hooks that don't exist (typos) and hook-named functions missing @hookimpl."""
    known = hook_names()
    for caller in _pm.get_hookcallers(plugin) or []:
        if not caller.has_spec():
            optional = all(i.optionalhook for i in caller.get_hookimpls() if i.plugin is plugin)
            if optional:
                continue
            close = difflib.get_close_matches(caller.name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known hooks: {', '.join(known)}"
            raise PluginError(name, caller.name, f"unknown hook {caller.name!r}{hint}")
    implemented = {c.name for c in _pm.get_hookcallers(plugin) or []}
    for hook in known:
        attr = getattr(plugin, hook, None)
        if callable(attr) and hook not in implemented:
            raise PluginError(name, hook, f"{hook} is defined but not decorated with @hookimpl "
                                          "(from ltxv2_diffusers.hookspecs import hookimpl)")


def _register(plugin: object, name: str, source: str, version: str | None = None) -> str | None:
    try:
        registered = _pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(name, None, f"invalid hook implementation: {exc}") from exc
    except ValueError as exc:
        raise PluginError(name, None, str(exc)) from exc
    if registered is None:  # blocked
        return None
    try:
        _validate(plugin, name)
    except PluginError:
        _pm.unregister(name=name)
        raise
    _sources[name] = (source, version)
    return registered


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(ep.name, ep)  # one distribution may be visible twice on sys.path
    return sorted(seen.values(), key=lambda ep: ep.name)


def _load(policy: PluginPolicy) -> None:
    from ltxv2_diffusers.default_plugins import DEFAULT_PLUGINS

    _skipped.clear()
    for name in policy.block:
        _pm.set_blocked(name)
    for name, module in DEFAULT_PLUGINS.items():
        if name in policy.block:
            _skipped[name] = ("built-in", "blocked")
        elif _pm.get_plugin(name) is None:
            _register(importlib.import_module(module), name, "built-in")
    eps = _entry_points()
    if policy.allow is not None:
        missing = policy.allow - {ep.name for ep in eps} - set(DEFAULT_PLUGINS)  # built-ins always load
        if missing:
            installed = ", ".join(ep.name for ep in eps) or "none"
            raise PluginError(None, None, f"--plugins names {', '.join(sorted(missing))}, not installed "
                                          f"(installed entry points in group {ENTRY_POINT_GROUP!r}: {installed})")
    for ep in eps:
        dist = getattr(ep, "dist", None)
        dist_name = dist.metadata["Name"] if dist is not None else None
        source = dist_name or ep.value
        if ep.name in policy.block:
            _skipped[ep.name] = (source, "blocked")
            continue
        if not policy.autoload:
            _skipped[ep.name] = (source, "off (autoload disabled)")
            continue
        if policy.allow is not None and ep.name not in policy.allow:
            _skipped[ep.name] = (source, "off (not in --plugins)")
            continue
        if _pm.get_plugin(ep.name) is not None:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(ep.name, None, f"entry point {ep.value!r} of {dist_name or 'unknown distribution'} "
                                             f"failed to import: {type(exc).__name__}: {exc}; uninstall it or "
                                             f"block it with --plugins=-{ep.name}") from exc
        _register(plugin, ep.name, dist_name or ep.value, dist.version if dist is not None else None)
    _pm.check_pending()


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, with built-in and allowed installed plugins loaded (once)."""
    global _loaded
    if not _loaded:
        with _lock:
            if not _loaded:
                _load(_flag_policy.merged(PluginPolicy.from_env()))
                _loaded = True
    return _pm


def __getattr__(name: str):
    # `plugins.pm` is the loaded manager; resolving it lazily keeps imports free of side effects.
    if name == "pm":
        return get_plugin_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def configure(plugins_arg: str | Iterable[str] | None = None) -> PluginPolicy:
    """Apply a ``--plugins`` value (see :meth:`PluginPolicy.parse`) and reload the plugins.

    Plugins registered with :func:`register_plugin` stay unless blocked. Returns the policy in
    effect (flag and environment combined).
    """
    global _loaded, _flag_policy
    try:
        policy = PluginPolicy.parse(plugins_arg)
    except ValueError as exc:
        raise PluginError(None, None, str(exc)) from exc
    with _lock:
        for name, (source, _) in list(_sources.items()):
            if source != "manual" or name in policy.block:
                if _pm.get_plugin(name) is not None:
                    _pm.unregister(name=name)
                del _sources[name]
        for name, _plugin in _pm.list_name_plugin():
            if _pm.is_blocked(name):
                _pm.unblock(name)
        _flag_policy = policy
        _loaded = False
        get_plugin_manager()
    return _flag_policy.merged(PluginPolicy.from_env())


def register_plugin(plugin: object, name: str | None = None) -> str | None:
    """Register a plugin object or module by hand (tests, notebooks); returns its name, or None
    when the name is blocked. Unknown hooks fail here with :class:`PluginError`."""
    get_plugin_manager()
    name = name or _pm.get_canonical_name(plugin)
    with _lock:
        return _register(plugin, name, "manual")


def unregister_plugin(name: str) -> None:
    """Remove a registered plugin by name."""
    with _lock:
        if _pm.get_plugin(name) is None:
            raise PluginError(name, None, "is not registered")
        _pm.unregister(name=name)
        _sources.pop(name, None)


# --------------------------------------------------------------------------------------------
# listing


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """One row of ``--list_plugins``."""

    name: str
    source: str  # "built-in", "manual", or the distribution providing the entry point
    version: str | None
    hooks: tuple[str, ...]
    status: str  # "loaded", "blocked", or why an installed entry point was not loaded


def plugin_infos() -> list[PluginInfo]:
    """Every registered plugin (built-ins first) and every installed entry point left out."""
    pm = get_plugin_manager()
    rows = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        source, version = _sources.get(name, ("manual", None))
        hooks = tuple(sorted(c.name for c in pm.get_hookcallers(plugin) or []))
        rows.append(PluginInfo(name, source, version, hooks, "loaded"))
    for name, (source, why) in _skipped.items():
        rows.append(PluginInfo(name, source, None, (), why))
    order = {"built-in": 0, "manual": 2}
    return sorted(rows, key=lambda r: (r.status != "loaded", order.get(r.source, 1), r.name))


def describe_plugins() -> str:
    """A table of every plugin, where it comes from and the hooks it implements."""
    rows = plugin_infos()
    policy = _flag_policy.merged(PluginPolicy.from_env())
    head = [f"Plugins (entry-point group {ENTRY_POINT_GROUP!r}; autoload {'on' if policy.autoload else 'off'}"
            + (f"; blocked: {', '.join(sorted(policy.block))}" if policy.block else "") + ")"]
    table = [("NAME", "SOURCE", "STATUS", "HOOKS")]
    for r in rows:
        source = r.source + (f" {r.version}" if r.version else "")
        table.append((r.name, source, r.status, ", ".join(h.removeprefix("ltxv2_") for h in r.hooks) or "-"))
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = []
    for row in table:
        prefix = "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  "
        wrapped = textwrap.wrap(row[3], width=max(30, 100 - len(prefix)), break_on_hyphens=False) or ["-"]
        lines.append(prefix + wrapped[0])
        lines.extend(" " * len(prefix) + more for more in wrapped[1:])
    return "\n".join(head + lines)


# --------------------------------------------------------------------------------------------
# typed facade


class WeightingScheme:
    """A registered weighting function that names its plugin when it fails or returns bad weights."""

    def __init__(self, name: str, fn: Callable[[Any, str], Any], plugin: str):
        self.name, self.plugin, self.__wrapped__ = name, plugin, fn

    def __call__(self, sigmas, modality: str = "video"):
        import torch

        where = f"weighting scheme {self.name!r}"
        try:
            weights = torch.as_tensor(self.__wrapped__(sigmas, modality))
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(self.plugin, where, f"{type(exc).__name__}: {exc}") from exc
        shape = tuple(torch.as_tensor(sigmas).shape)
        if weights.ndim and tuple(weights.shape) != shape:
            raise PluginError(self.plugin, where, f"returned weights of shape {tuple(weights.shape)} for sigmas of "
                                                  f"shape {shape}; return one weight per sigma")
        # Value checks read the tensor back; skip them on accelerators (a device sync every step),
        # where a bad weight still surfaces as a non-finite loss.
        if weights.device.type == "cpu" and (not bool(torch.isfinite(weights).all()) or bool((weights < 0).any())):
            raise PluginError(self.plugin, where, "returned negative or non-finite weights "
                                                  f"(sigmas in [{float(torch.as_tensor(sigmas).min()):.4g}, "
                                                  f"{float(torch.as_tensor(sigmas).max()):.4g}])")
        return weights

    def __repr__(self) -> str:
        return f"WeightingScheme({self.name!r}, {self.__wrapped__!r}, plugin={self.plugin!r})"


def _collect_registry(hook: str, what: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Run a ``register(name, obj)`` hook: ({name: obj}, {name: plugin}). Installed plugins
    override built-ins; two installed plugins registering one name clash."""
    pm = get_plugin_manager()
    found: dict[str, Any] = {}
    owner: dict[str, str] = {}

    def register(name: str, obj: Any) -> None:
        plugin = _current_plugin.get() or "?"
        if not isinstance(name, str) or not name:
            raise TypeError(f"{what} name must be a non-empty string, got {name!r}")
        if not callable(obj):
            raise TypeError(f"{what} {name!r} must be callable, got {type(obj).__name__}")
        if name in found:
            if _sources.get(plugin, ("",))[0] == "built-in":
                return  # an installed plugin already replaced this built-in (they run first)
            if _sources.get(owner[name], ("",))[0] != "built-in":
                raise ValueError(f"{what} {name!r} is registered by both {owner[name]!r} and {plugin!r}; "
                                 f"block one with --plugins=-<name>")
        found[name], owner[name] = obj, plugin

    getattr(pm.hook, hook)(register=register)
    return found, owner


def weighting_schemes() -> dict[str, Callable[[Any, str], Any]]:
    """Every registered weighting scheme: name -> ``fn(sigmas, modality) -> weights``.

    Each ``fn`` is a :class:`WeightingScheme` around the registered function (``fn.__wrapped__``)
    that checks the weights (one per sigma; finite and >= 0 when on CPU) and names the plugin on
    failure.
    """
    found, owners = _collect_registry("ltxv2_register_weighting_schemes", "weighting scheme")
    return {name: WeightingScheme(name, fn, owners[name]) for name, fn in found.items()}


def text_encoder_backends() -> dict[str, Callable[..., Any]]:
    """Every registered text-encoder backend: name -> factory."""
    return _collect_registry("ltxv2_register_text_encoder_backends", "text encoder backend")[0]


def sample_sigmas(batch_size: int, num_tokens: int, modality: str, args: Any, generator: Any = None):
    """Training sigmas ``[batch_size]`` or ``[batch_size, num_tokens]`` in [0, 1] for one batch of
    one modality (first plugin answering wins); None when no plugin answers."""
    hook = "ltxv2_sample_sigmas"
    result = get_plugin_manager().hook.ltxv2_sample_sigmas(
        batch_size=batch_size, num_tokens=num_tokens, modality=modality, args=args, generator=generator)
    if result is None:
        return None
    import torch

    sigmas = torch.as_tensor(result)
    shapes = [(batch_size,), (batch_size, num_tokens)]
    problem = None
    if tuple(sigmas.shape) not in shapes:
        problem = f"returned sigmas of shape {tuple(sigmas.shape)}; expected {shapes[0]} or {shapes[1]}"
    elif not sigmas.is_floating_point():
        problem = f"returned {sigmas.dtype} sigmas; return floats in [0, 1]"
    elif sigmas.device.type == "cpu" and sigmas.numel() and not bool(((sigmas >= 0) & (sigmas <= 1)).all()):
        problem = f"returned sigmas outside [0, 1] (min {float(sigmas.min()):.4g}, max {float(sigmas.max()):.4g})"
    if problem:
        raise PluginError(_answered_by.get(hook), hook, f"{problem} for modality {modality!r}")
    return sigmas


def audio_loss(pred, target, mask, sigmas, batch, args):
    """The audio loss term, a scalar tensor (first plugin answering wins; built-in: masked MSE);
    None when no plugin answers."""
    hook = "ltxv2_audio_loss"
    result = get_plugin_manager().hook.ltxv2_audio_loss(
        pred=pred, target=target, mask=mask, sigmas=sigmas, batch=batch, args=args)
    if result is None:
        return None
    import torch

    if not torch.is_tensor(result) or result.numel() != 1:
        what = f"a tensor of shape {tuple(result.shape)}" if torch.is_tensor(result) else type(result).__name__
        raise PluginError(_answered_by.get(hook), hook, f"returned {what}; return a scalar tensor "
                                                        "(reduce over the batch, tokens and channels)")
    return result.reshape(())


def _impls(hook: str) -> list[tuple[str, Callable[..., Any], tuple[str, ...]]]:
    """A hook's plain implementations in pluggy's call order: (plugin name, guarded fn, argnames)."""
    pm = get_plugin_manager()
    found = []
    for impl in reversed(getattr(pm.hook, hook).get_hookimpls()):
        if impl.wrapper or impl.hookwrapper:
            raise PluginError(impl.plugin_name, hook, "hook wrappers are not supported for this hook")
        found.append((impl.plugin_name, pm.guarded_impl(impl, hook).function, impl.argnames))
    return found


def extra_losses(outputs, batch, args) -> list[tuple[str, Any]]:
    """All plugins' extra loss terms as ``(name, loss)``; a name used twice is an error."""
    terms: list[tuple[str, Any]] = []
    owners: dict[str, str] = {}
    kwargs = {"outputs": outputs, "batch": batch, "args": args}
    for plugin, fn, argnames in _impls("ltxv2_extra_losses"):
        result = fn(*[kwargs[a] for a in argnames])
        if result is None:
            continue
        try:
            pairs = [(name, loss) for name, loss in result]
        except (TypeError, ValueError):
            raise PluginError(plugin, "ltxv2_extra_losses",
                              f"must return a list of (name, loss) pairs, got {result!r:.200}") from None
        for name, loss in pairs:
            if not isinstance(name, str) or not name:
                raise PluginError(plugin, "ltxv2_extra_losses", f"loss name must be a non-empty string, got {name!r}")
            if name in owners:
                raise PluginError(plugin, "ltxv2_extra_losses", f"loss {name!r} was already returned by {owners[name]!r}")
            owners[name] = plugin
            terms.append((name, loss))
    return terms


def transform_batch(batch, args):
    """The batch after every plugin's transform, chained (None from a plugin = unchanged)."""
    for plugin, fn, argnames in _impls("ltxv2_transform_batch"):
        kwargs = {"batch": batch, "args": args}
        result = fn(*[kwargs[a] for a in argnames])
        if result is not None:
            if not isinstance(result, Mapping):
                raise PluginError(plugin, "ltxv2_transform_batch",
                                  f"must return a batch dict or None, got {type(result).__name__}")
            batch = result
    return batch


def conditioning_masks(batch, args, generator) -> dict[str, Any]:
    """Every plugin's clean-token masks per modality, OR-ed (empty when no plugin adds any)."""
    merged: dict[str, Any] = {}
    for plugin, fn, argnames in _impls("ltxv2_conditioning_masks"):
        kwargs = {"batch": batch, "args": args, "generator": generator}
        result = fn(*[kwargs[a] for a in argnames])
        if result is None:
            continue
        if not isinstance(result, Mapping) or not set(result) <= {"video", "audio"}:
            raise PluginError(plugin, "ltxv2_conditioning_masks",
                              f"must return a dict with 'video' and/or 'audio' masks or None, got {result!r:.200}")
        for name, mask in result.items():
            if mask is not None:
                merged[name] = mask if name not in merged else merged[name] | mask
    return merged


def add_arguments(parser) -> None:
    """Let every plugin add its command-line flags."""
    get_plugin_manager().hook.ltxv2_add_arguments(parser=parser)


def on_train_start(args, model) -> None:
    """Tell plugins training starts."""
    get_plugin_manager().hook.ltxv2_on_train_start(args=args, model=model)


def implemented(hook: str) -> bool:
    """Whether any registered plugin implements `hook` (e.g. ``"ltxv2_on_step_end"``)."""
    return bool(getattr(get_plugin_manager().hook, hook).get_hookimpls())


def on_step_end(step: int, logs: dict) -> None:
    """Tell plugins an optimizer step finished (they may add entries to ``logs``)."""
    get_plugin_manager().hook.ltxv2_on_step_end(step=step, logs=logs)


def on_save(path, step: int) -> None:
    """Tell plugins a checkpoint was written."""
    get_plugin_manager().hook.ltxv2_on_save(path=path, step=step)


def on_train_end(output_dir) -> None:
    """Tell plugins training finished."""
    get_plugin_manager().hook.ltxv2_on_train_end(output_dir=output_dir)
