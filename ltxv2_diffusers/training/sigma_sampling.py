"""The built-in training-sigma sampler: `--timestep_sampling` (musubi's name) / `--sigma_sampling`, musubi's
`--sigmoid_scale`, `--discrete_flow_shift`, `--logit_std` and a `--min_timestep`/`--max_timestep` range.

Every method draws sigma in [0, 1] (musubi's `t`, before it multiplies by 1000):
- `shifted_logit_normal` (musubi's `sigma` too): the official LTX-2 trainer's (the scheduler's; shift grows with
  token count, draws stretched, a share uniform); `--shifted_logit_mode legacy` is musubi's older plain
  `sigmoid(N(shift, logit_std))`, its default for `--ltx_version 2.0`;
- `uniform`: uniform in [0, 1);
- `sigmoid`: `sigmoid(sigmoid_scale * N(0, 1))`;
- `shift`: the sigmoid draw `t` shifted by `s = discrete_flow_shift`: `s*t / (1 + (s-1)*t)`.
`--min_timestep`/`--max_timestep` are read in the run's `--ltxv2_timestep_format` and turned into a sigma
range `[lo, hi]`; as in musubi, draws are scaled into it (`lo + sigma * (hi - lo)`), or, with
`--preserve_distribution_shape`, drawn again until they fall inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ltxv2_diffusers.timesteps import parse_timestep_format, timesteps_to_sigmas

METHODS = ("shifted_logit_normal", "uniform", "sigmoid", "shift")
ALIASES = {"sigma": "shifted_logit_normal"}  # musubi's argparse default, which its LTX-2 trainer reads so
DEFAULT_METHOD = "shifted_logit_normal"
LOGIT_MODES = ("stretched", "legacy")
_MAX_REDRAWS = 1000

_schedulers: dict[tuple[str, float], Any] = {}


def _scheduler(method: str, std: float):
    """One training scheduler per (method, std); drawing sigmas does not change its state."""
    if (method, std) not in _schedulers:
        from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

        _schedulers[(method, std)] = LTXV2FlowMatchScheduler(training_sampling=method, training_std=std)
    return _schedulers[(method, std)]


def sigma_range(args: Any) -> tuple[float, float] | None:
    """`(lo, hi)` from `--min_timestep`/`--max_timestep` in `--ltxv2_timestep_format`; None when neither is set.
    Raises ValueError naming the flag for a value outside the format's range or an empty range."""
    lo_t, hi_t = getattr(args, "min_timestep", None), getattr(args, "max_timestep", None)
    if lo_t is None and hi_t is None:
        return None
    fmt = getattr(args, "timestep_format", None) or parse_timestep_format(getattr(args, "ltxv2_timestep_format", None))
    bounds = []
    for flag, value, default in (("--min_timestep", lo_t, 0.0), ("--max_timestep", hi_t, 1.0)):
        if value is None:
            bounds.append(default)
            continue
        try:
            bounds.append(float(timesteps_to_sigmas(torch.tensor(float(value), dtype=torch.float64), fmt)))
        except ValueError:
            lo, hi = fmt.bounds
            raise ValueError(f"{flag} {value:g} is outside the {fmt.value} range [{lo:g}, {hi:g}] "
                             "(it is read in --ltxv2_timestep_format)") from None
    if bounds[0] > bounds[1]:
        raise ValueError(f"--min_timestep/--max_timestep give the empty sigma range [{bounds[0]:g}, {bounds[1]:g}]")
    return bounds[0], bounds[1]


def resolve_logit_mode(args: Any) -> str:
    """`--shifted_logit_mode`, or musubi's rule when absent: `legacy` for `--ltx_version 2.0`, else `stretched`."""
    mode = getattr(args, "shifted_logit_mode", None)
    if mode is None:
        mode = "legacy" if getattr(args, "ltx_version", None) == "2.0" else "stretched"
    if mode not in LOGIT_MODES:
        raise ValueError(f"--shifted_logit_mode {mode!r}: choose one of {', '.join(LOGIT_MODES)}")
    return mode


@dataclass(frozen=True)
class SigmaSampler:
    """How training sigmas are drawn (see the module docstring)."""

    method: str = DEFAULT_METHOD
    sigmoid_scale: float = 1.0
    shift: float = 1.0
    logit_std: float = 1.0
    logit_mode: str = "stretched"
    range: tuple[float, float] | None = None
    preserve_distribution_shape: bool = False

    @classmethod
    def from_args(cls, args: Any) -> "SigmaSampler":
        method = getattr(args, "timestep_sampling", None) or getattr(args, "sigma_sampling", None) or DEFAULT_METHOD
        method = ALIASES.get(method, method)
        if method not in METHODS:
            raise ValueError(f"--timestep_sampling {method!r} is not supported; choose one of {', '.join(METHODS)}")
        return cls(method, float(getattr(args, "sigmoid_scale", None) or 1.0),
                   float(getattr(args, "discrete_flow_shift", None) or 1.0),
                   float(getattr(args, "logit_std", None) or 1.0), resolve_logit_mode(args), sigma_range(args),
                   bool(getattr(args, "preserve_distribution_shape", False)))

    def draw(self, batch_size: int, num_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`[batch_size]` float32 sigmas of the method alone, in [0, 1] (no range applied)."""
        device = generator.device if generator is not None else torch.device("cpu")
        if self.method == "shifted_logit_normal" and self.logit_mode == "legacy":
            mu = _scheduler(self.method, self.logit_std).mu_for_tokens(num_tokens)
            return torch.sigmoid(torch.randn(batch_size, generator=generator, device=device) * self.logit_std + mu)
        if self.method in ("shifted_logit_normal", "uniform"):
            return _scheduler(self.method, self.logit_std).sample_sigmas(batch_size, num_tokens, generator=generator)
        t = torch.sigmoid(self.sigmoid_scale * torch.randn(batch_size, generator=generator, device=device))
        if self.method == "shift":
            t = (t * self.shift) / (1 + (self.shift - 1) * t)
        return t

    def sample(self, batch_size: int, num_tokens: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`[batch_size]` training sigmas: the method's draws, within `range` when one is set."""
        sigmas = self.draw(batch_size, num_tokens, generator)
        if self.range is None:
            return sigmas
        lo, hi = self.range
        if not self.preserve_distribution_shape:
            return lo + sigmas * (hi - lo)
        kept = sigmas[(sigmas >= lo) & (sigmas <= hi)]
        for _ in range(_MAX_REDRAWS):
            if kept.numel() >= batch_size:
                break
            more = self.draw(batch_size, num_tokens, generator)
            kept = torch.cat([kept, more[(more >= lo) & (more <= hi)]])
        if kept.numel() < batch_size:
            raise ValueError(f"--preserve_distribution_shape: {self.method} sampling almost never draws sigmas in "
                             f"[{lo:g}, {hi:g}]; widen --min_timestep/--max_timestep or drop the flag")
        return kept[:batch_size]
