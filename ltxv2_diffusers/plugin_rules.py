"""The rules the plugin manager applies: which plugins load, and what a good answer looks like.

`PluginPolicy` is the `--plugins` value. `guarded_hooks` checks a plugin's hook functions when it
is registered and wraps each so that an exception, or a malformed answer (`RESULT_CHECKS`), fails
where it was given, with the plugin's name, instead of as a shape error deep inside the training
step. Value checks read tensors back only on CPU: on an accelerator that
would be a device sync every step, and a bad value still surfaces as a non-finite loss. torch is
imported inside the checks so that importing the plugin manager stays cheap.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ltxv2_diffusers import hookspecs
from ltxv2_diffusers.hookspecs import hookimpl


class PluginError(RuntimeError):
    """A plugin failed to load, validate or run; ``plugin`` and ``hook`` say which and where."""

    def __init__(self, plugin: str | None, hook: str | None, message: str):
        self.plugin, self.hook = plugin, hook
        where = (f"plugin {plugin!r}" if plugin else "plugins") + (f" in hook {hook}" if hook else "")
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class PluginPolicy:
    """Which plugins load: ``autoload`` off loads no installed one; ``allow`` (None = all) names the
    installed ones to load; ``block`` names plugins (built-in ones too) never registered."""

    autoload: bool = True
    allow: frozenset[str] | None = None
    block: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, value: str | Iterable[str] | None) -> PluginPolicy:
        """A ``--plugins`` value: ``all`` (default), ``none``, ``a,b`` (only these) and/or ``-name`` (block)."""
        items = [] if value is None else [value] if isinstance(value, str) else list(value)
        tokens = [t for item in items for t in str(item).replace(",", " ").split() if t != "all"]
        block = {t[1:] for t in tokens if t.startswith("-") and len(t) > 1}
        allow = {t for t in tokens if t != "none" and not t.startswith("-")}
        if bad := [t for t in tokens if t in ("-", "+") or t.startswith("+")]:
            raise PluginError(None, None, f"--plugins: {bad[0]!r} is not a plugin name")
        if "none" in tokens and allow:
            raise PluginError(None, None, f"--plugins: 'none' cannot be combined with plugin names "
                                          f"({', '.join(sorted(allow))}); use 'none' alone, or list only the plugins to load")
        return cls("none" not in tokens, frozenset(allow) or None, frozenset(block))


def check_sigmas(result: Any, call: Mapping[str, Any]) -> str | None:
    import torch

    sigmas = torch.as_tensor(result)
    shapes = [(call["batch_size"],), (call["batch_size"], call["num_tokens"])]
    where = f" for modality {call['modality']!r}"
    if tuple(sigmas.shape) not in shapes:
        return f"returned sigmas of shape {tuple(sigmas.shape)}; expected {shapes[0]} or {shapes[1]}{where}"
    if not sigmas.is_floating_point():
        return f"returned {sigmas.dtype} sigmas; return floats in [0, 1]{where}"
    if sigmas.device.type == "cpu" and sigmas.numel() and not bool(((sigmas >= 0) & (sigmas <= 1)).all()):
        return f"returned sigmas outside [0, 1] (min {float(sigmas.min()):.4g}, max {float(sigmas.max()):.4g}){where}"
    return None


def check_scalar_loss(result: Any, call: Mapping[str, Any]) -> str | None:
    import torch

    if torch.is_tensor(result) and result.numel() == 1:
        return None
    what = f"a tensor of shape {tuple(result.shape)}" if torch.is_tensor(result) else type(result).__name__
    return f"returned {what}; return a scalar tensor (reduce over the batch, tokens and channels)"


def check_loss_pairs(result: Any, call: Mapping[str, Any]) -> str | None:
    try:
        pairs = [(name, loss) for name, loss in result]
    except (TypeError, ValueError):
        return f"must return a list of (name, loss) pairs, got {result!r:.200}"
    bad = [name for name, _ in pairs if not isinstance(name, str) or not name]
    return f"loss name must be a non-empty string, got {bad[0]!r}" if bad else None


def check_batch(result: Any, call: Mapping[str, Any]) -> str | None:
    return None if isinstance(result, Mapping) else f"must return a batch dict or None, got {type(result).__name__}"


def sigmas_from_timesteps(result: Any, call: Mapping[str, Any]) -> Any:
    """A `{"timesteps": ...}` answer is in the run's `--ltxv2_timestep_format`: sigmas by its definition
    (values outside the format's range are an error)."""
    if not (isinstance(result, Mapping) and "timesteps" in result):
        return result
    import torch

    from ltxv2_diffusers.timesteps import timesteps_to_sigmas

    args = call["args"]
    fmt = getattr(args, "timestep_format", None) or getattr(args, "ltxv2_timestep_format", None)
    return timesteps_to_sigmas(torch.as_tensor(result["timesteps"]), fmt)


# Answers turned into their checked form before the check.
RESULT_CONVERSIONS: dict[str, Callable[[Any, Mapping[str, Any]], Any]] = {
    "ltxv2_sample_sigmas": sigmas_from_timesteps,
}

RESULT_CHECKS: dict[str, Callable[[Any, Mapping[str, Any]], str | None]] = {
    "ltxv2_sample_sigmas": check_sigmas,
    "ltxv2_audio_loss": check_scalar_loss,
    "ltxv2_extra_losses": check_loss_pairs,
    "ltxv2_transform_batch": check_batch,
}


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
        sigmas = torch.as_tensor(sigmas)
        if weights.ndim and weights.shape != sigmas.shape:
            raise PluginError(self.plugin, where, f"returned weights of shape {tuple(weights.shape)} for sigmas of "
                                                  f"shape {tuple(sigmas.shape)}; return one weight per sigma")
        if weights.device.type == "cpu" and (not bool(torch.isfinite(weights).all()) or bool((weights < 0).any())):
            raise PluginError(self.plugin, where, "returned negative or non-finite weights (sigmas in "
                                                  f"[{float(sigmas.min()):.4g}, {float(sigmas.max()):.4g}])")
        return weights

    def __repr__(self) -> str:
        return f"WeightingScheme({self.name!r}, {self.__wrapped__!r}, plugin={self.plugin!r})"


def hook_names() -> list[str]:
    """Every hook name, in hookspecs.py order."""
    return [n for n in vars(hookspecs) if n.startswith("ltxv2_") and callable(getattr(hookspecs, n))]


def _required_args(fn: Callable) -> list[str]:
    """The arguments a hook function asks for (as pluggy reads them: those without a default)."""
    return [n for n, p in inspect.signature(fn).parameters.items() if p.default is inspect.Parameter.empty]


def _guard(fn: Callable, plugin: str, hook: str, spec_args: list[str]) -> Callable:
    """`fn` called with its subset of the hook's arguments; failures and bad results name the plugin.

    The guard takes every argument of the spec (pluggy passes what a function names), so it can
    check a result against the call and tell a registry which plugin is registering.
    """
    own = _required_args(fn)
    check, convert = RESULT_CHECKS.get(hook), RESULT_CONVERSIONS.get(hook)

    def guarded(*args):
        call = dict(zip(spec_args, args))
        if "register" in call:
            call["register"] = functools.partial(call["register"], plugin=plugin)
        try:
            result = fn(*[call[a] for a in own])
            if convert and result is not None:
                result = convert(result, call)
            problem = check(result, call) if check and result is not None else None
        except PluginError:
            raise  # already names the plugin (a nested facade call)
        except Exception as exc:
            raise PluginError(plugin, hook, f"{type(exc).__name__}: {exc}") from exc
        if problem:
            raise PluginError(plugin, hook, problem)
        return result

    # pluggy reads a function's arguments through `inspect.unwrap`: unwrapping to the hookspec makes
    # pluggy pass the guard every argument of the hook.
    guarded.__wrapped__ = getattr(hookspecs, hook)
    return guarded


def guarded_hooks(pm, plugin: object, name: str) -> types.SimpleNamespace:
    """What `pm` registers for `plugin`: its hookimpls, each guarded (wrappers as they are).

    Fails with :class:`PluginError` on an unknown hook (with the closest name), an argument the
    hook does not have, and a hook-named function without ``@hookimpl``.
    """
    known, hooks = hook_names(), types.SimpleNamespace()
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            if attr in known and callable(getattr(plugin, attr, None)):
                raise PluginError(name, attr, f"{attr} is defined but not decorated with @hookimpl "
                                              "(from ltxv2_diffusers.hookspecs import hookimpl)")
            continue
        fn, hook = getattr(plugin, attr), opts.get("specname") or attr
        if hook not in known:
            if opts.get("optionalhook"):
                continue
            close = difflib.get_close_matches(hook, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; known hooks: {', '.join(known)}"
            raise PluginError(name, hook, f"unknown hook {hook!r}{hint}")
        spec_args = list(inspect.signature(getattr(hookspecs, hook)).parameters)
        extra = [a for a in _required_args(fn) if a not in spec_args]
        if extra:
            raise PluginError(name, hook, f"argument(s) {extra} of {attr} are not arguments of the hook "
                                          f"({', '.join(spec_args)})")
        plain = not (opts.get("wrapper") or opts.get("hookwrapper"))
        setattr(hooks, attr, hookimpl(**opts)(_guard(fn, name, hook, spec_args)) if plain else fn)
    return hooks
