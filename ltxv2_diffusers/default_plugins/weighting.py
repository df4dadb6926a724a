"""Built-in loss-weighting schemes for flow matching (selected with ``--weighting_scheme``).

An ordinary ``trylast`` plugin: a scheme an installed plugin registers under the same name replaces it.

Flow matching here means ``x_t = σ·noise + (1−σ)·x0`` with the velocity target ``noise − x0``
(docs/architecture.md). Every scheme maps sigmas (``[B]`` or per-token ``[B, N]``, in ``[0, 1]``)
to weights of the same shape, in float32. Formulas (σ is clamped to ``[EPS, 1]`` where it divides):

- ``none``:          w = 1
- ``sigma_sqrt``:    w = σ⁻²                                  (as diffusers' SD3 scripts)
- ``cosmap``:        w = 2 / (π · (1 − 2σ + 2σ²))             (as diffusers' SD3 scripts)
- ``logit_normal``:  w = pdf of LogitNormal(0, 1) at σ = exp(−logit(σ)²/2) / (√(2π)·σ·(1−σ));
                     it averages to 1 over uniformly drawn σ, so it turns uniform sampling into
                     the SD3 logit-normal objective without changing the sampler.
- ``min_snr``:       with snr = ((1−σ)/σ)², w = min(snr, γ) / snr = min(1, γ·σ²/(1−σ)²), γ = 5.
                     Min-SNR-γ as written for ε-prediction, applied to the velocity loss: the
                     easy low-noise steps (snr > γ, i.e. σ < 1/(1+√γ)) are down-weighted,
                     the rest keep weight 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ltxv2_diffusers.hookspecs import hookimpl

EPS = 1e-4
MIN_SNR_GAMMA = 5.0

WeightingFn = Callable[[torch.Tensor, str], torch.Tensor]


def _as_float(sigmas: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(sigmas):
        sigmas = torch.as_tensor(sigmas)
    return sigmas.float()


def snr(sigmas: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio of flow matching, ((1−σ)/σ)²; +inf at σ = 0."""
    s = _as_float(sigmas)
    return ((1.0 - s) / s) ** 2


def none_weighting(sigmas: torch.Tensor, modality: str = "video") -> torch.Tensor:
    """Uniform weights (plain MSE)."""
    return torch.ones_like(_as_float(sigmas))


def sigma_sqrt_weighting(sigmas: torch.Tensor, modality: str = "video") -> torch.Tensor:
    """w = σ⁻² (σ clamped to ``EPS`` so σ = 0 stays finite)."""
    return _as_float(sigmas).clamp(min=EPS) ** -2.0


def cosmap_weighting(sigmas: torch.Tensor, modality: str = "video") -> torch.Tensor:
    """w = 2 / (π(1 − 2σ + 2σ²)), the cosine-map weighting of SD3."""
    s = _as_float(sigmas)
    return 2.0 / (math.pi * (1.0 - 2.0 * s + 2.0 * s**2))


def logit_normal_weighting(
    sigmas: torch.Tensor, modality: str = "video", mean: float = 0.0, std: float = 1.0
) -> torch.Tensor:
    """w = density of LogitNormal(mean, std) at σ (σ clamped to ``[EPS, 1 − EPS]``)."""
    s = _as_float(sigmas).clamp(EPS, 1.0 - EPS)
    logit = torch.log(s) - torch.log1p(-s)
    gauss = torch.exp(-0.5 * ((logit - mean) / std) ** 2) / (std * math.sqrt(2.0 * math.pi))
    return gauss / (s * (1.0 - s))


def min_snr_weighting(
    sigmas: torch.Tensor, modality: str = "video", gamma: float = MIN_SNR_GAMMA
) -> torch.Tensor:
    """w = min(snr, γ)/snr = min(1, γσ²/(1−σ)²); 1 at σ = 1, 0 at σ = 0."""
    if gamma <= 0:
        raise ValueError(f"min_snr gamma must be > 0, got {gamma}")
    s = _as_float(sigmas)
    one_minus = 1.0 - s
    ratio = gamma * s**2 / one_minus.clamp(min=torch.finfo(s.dtype).tiny) ** 2
    return torch.where(one_minus > 0, ratio.clamp(max=1.0), torch.ones_like(s))


BUILTIN_WEIGHTING_SCHEMES: dict[str, WeightingFn] = {
    "none": none_weighting,
    "sigma_sqrt": sigma_sqrt_weighting,
    "cosmap": cosmap_weighting,
    "logit_normal": logit_normal_weighting,
    "min_snr": min_snr_weighting,
}


@hookimpl(trylast=True)
def ltxv2_register_weighting_schemes(register):
    for name, fn in BUILTIN_WEIGHTING_SCHEMES.items():
        register(name, fn)
