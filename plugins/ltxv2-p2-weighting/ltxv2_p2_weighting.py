"""P2 ("perception prioritized") loss weighting for flow matching: ``--weighting_scheme p2``.

Choi et al. 2022 weight the loss by ``1 / (k + snr)^γ``. With flow matching's
``snr = ((1 − σ)/σ)²`` and ``k = 1, γ = 1`` this is ``w = σ² / (σ² + (1 − σ)²)``: close to 0 for
nearly clean inputs, 1/2 at σ = 1/2, 1 at pure noise. It shifts effort away from the fine-detail
steps the model learns easily, toward the coarse content.
"""

from ltxv2_diffusers.hookspecs import hookimpl

P2_K = 1.0
P2_GAMMA = 1.0


def p2_weighting(sigmas, modality="video"):
    """w = (k + snr)^-γ with snr = ((1 − σ)/σ)², written without dividing by σ."""
    import torch

    s = torch.as_tensor(sigmas).float()
    # (k + ((1-σ)/σ)²)^-γ = (σ² / (kσ² + (1-σ)²))^γ, finite at σ = 0.
    return (s**2 / (P2_K * s**2 + (1.0 - s) ** 2)) ** P2_GAMMA


@hookimpl
def ltxv2_register_weighting_schemes(register):
    register("p2", p2_weighting)
