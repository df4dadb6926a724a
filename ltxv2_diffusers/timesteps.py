"""User-facing timestep formats and their conversion to the model's sigma in [0, 1].

The meanings are the old musubi trainer's, so existing commands keep their behaviour:
`flowmatch_1_1000` is t in [1, 1000] with sigma = (t - 1) / 1000, `legacy_0_1000` is t in [0, 1000]
with sigma = t / 1000, `sd3_0_1` is already sigma in [0, 1].
"""

from __future__ import annotations

import enum

import torch


class TimestepFormat(str, enum.Enum):
    FLOWMATCH_1_1000 = "flowmatch_1_1000"
    LEGACY_0_1000 = "legacy_0_1000"
    SD3_0_1 = "sd3_0_1"

    def __str__(self) -> str:
        return self.value

    @property
    def bounds(self) -> tuple[float, float]:
        return _BOUNDS[self]


_BOUNDS = {
    TimestepFormat.FLOWMATCH_1_1000: (1.0, 1000.0),
    TimestepFormat.LEGACY_0_1000: (0.0, 1000.0),
    TimestepFormat.SD3_0_1: (0.0, 1.0),
}

FORMAT_CHOICES = tuple(f.value for f in TimestepFormat)

# Training sigma distributions of the scheduler's sampler (`--sigma_sampling`).
SIGMA_SAMPLING_CHOICES = ("shifted_logit_normal", "uniform")


def parse_timestep_format(value: str | None) -> TimestepFormat:
    """Parse `--ltxv2_timestep_format`; there is no default, a missing value is an error."""
    if value is None or value == "":
        raise ValueError(
            "--ltxv2_timestep_format is required (there is no default): choose one of "
            + ", ".join(FORMAT_CHOICES)
        )
    try:
        return TimestepFormat(str(value).lower())
    except ValueError:
        raise ValueError(
            f"--ltxv2_timestep_format {value!r} is unknown; choose one of {', '.join(FORMAT_CHOICES)}"
        ) from None


def timesteps_to_sigmas(timesteps: torch.Tensor, fmt: TimestepFormat | str) -> torch.Tensor:
    """Convert user timesteps in `fmt` to sigmas in [0, 1]; out-of-range values are an error."""
    fmt = parse_timestep_format(fmt) if not isinstance(fmt, TimestepFormat) else fmt
    t = torch.as_tensor(timesteps)
    if t.numel() == 0:
        return t.float()
    lo, hi = fmt.bounds
    t_min, t_max = float(t.min()), float(t.max())
    if t_min < lo or t_max > hi or not torch.isfinite(t).all():
        raise ValueError(
            f"timesteps in [{t_min}, {t_max}] are outside the {fmt.value} range [{lo:g}, {hi:g}]; "
            "check --ltxv2_timestep_format"
        )
    t = t.double() if t.dtype == torch.float64 else t.float()
    if fmt is TimestepFormat.FLOWMATCH_1_1000:
        return (t - 1.0) / 1000.0
    if fmt is TimestepFormat.LEGACY_0_1000:
        return t / 1000.0
    return t


def sigmas_to_timesteps(sigmas: torch.Tensor, fmt: TimestepFormat | str) -> torch.Tensor:
    """Inverse of `timesteps_to_sigmas`."""
    fmt = parse_timestep_format(fmt) if not isinstance(fmt, TimestepFormat) else fmt
    s = torch.as_tensor(sigmas)
    if fmt is TimestepFormat.FLOWMATCH_1_1000:
        return s * 1000.0 + 1.0
    if fmt is TimestepFormat.LEGACY_0_1000:
        return s * 1000.0
    return s
