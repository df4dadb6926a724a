"""Built-in audio loss: masked MSE over valid audio tokens and all channels (the video loss uses it too)."""

from __future__ import annotations

import torch

from ltxv2_diffusers.hookspecs import hookimpl


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over valid tokens and all channels; `mask` is `[B,N]` (True = counts)."""
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.mean()
    mask = mask.to(err.device, torch.bool)
    valid = mask.sum() * err.shape[-1]
    # All tokens padded: 0, still connected to the graph for DDP. No host check of `valid`: reading it
    # would make the CPU wait for the whole forward before it may queue the backward.
    return (err * mask.unsqueeze(-1)).sum() / valid.clamp(min=1)


@hookimpl(trylast=True)
def ltxv2_audio_loss(pred, target, mask):
    return masked_mse(pred, target, mask)
