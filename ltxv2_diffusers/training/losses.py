"""Flow-matching losses per modality, with masks, loss weights, sigma weighting and plugin loss terms.

Weights (the `--weighting_scheme` value per sample or token times `--video_loss_weight` /
`--audio_loss_weight`) are applied the way musubi users know: prediction and target are both
multiplied by sqrt(weight) before the squared error, so the loss scales by the weight exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from ltxv2_diffusers import plugins
from ltxv2_diffusers.default_plugins.audio_loss import masked_mse


def apply_sqrt_weight(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | float):
    """Scale prediction and target by sqrt(weight); `weight` is a scalar, `[B]` or `[B,N]`."""
    w = torch.as_tensor(weight, dtype=torch.float32, device=pred.device)
    if w.ndim == 1:
        w = w.view(-1, 1, 1)
    elif w.ndim == 2:
        w = w.unsqueeze(-1)
    root = w.clamp_min(0).sqrt()
    return pred.float() * root, target.float() * root


def sigma_weights(scheme: str, sigmas: torch.Tensor, modality: str, schemes: Mapping[str, Any]) -> torch.Tensor:
    """Per-sample (or per-token) loss weights of `--weighting_scheme` for these sigmas."""
    try:
        fn = schemes[scheme]
    except KeyError:
        raise ValueError(f"--weighting_scheme {scheme!r} is not registered; choose one of {', '.join(sorted(schemes))}") from None
    weights = torch.as_tensor(fn(sigmas, modality), dtype=torch.float32, device=sigmas.device)
    if weights.ndim == 0:
        weights = weights.expand(sigmas.shape)
    return weights


def compute_losses(outputs: Mapping[str, Any], batch: Mapping[str, Any], args) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its named terms for one adapter output.

    `outputs` maps modality (`video`/`audio`) to an object with `pred`, `target`, `mask`, `sigmas`.
    Terms: `loss/video` (masked MSE), `loss/audio` (the `ltxv2_audio_loss` hook, built-in masked MSE),
    each already multiplied by its loss weight and sigma weighting, plus every `ltxv2_extra_losses`
    term under `loss/<name>`. Returns `(total, terms)` with detached terms for logging.
    """
    schemes = plugins.weighting_schemes()
    terms: dict[str, torch.Tensor] = {}
    total: torch.Tensor | None = None

    def add(name: str, value: torch.Tensor) -> None:
        nonlocal total
        value = value.float()
        terms[name] = value.detach()
        total = value if total is None else total + value

    video = outputs.get("video")
    if video is not None:
        weight = sigma_weights(args.weighting_scheme, video.sigmas, "video", schemes) * float(args.video_loss_weight)
        pred, target = apply_sqrt_weight(video.pred, video.target, weight)
        add("loss/video", masked_mse(pred, target, video.mask))
    audio = outputs.get("audio")
    if audio is not None:
        weight = sigma_weights(args.weighting_scheme, audio.sigmas, "audio", schemes) * float(args.audio_loss_weight)
        pred, target = apply_sqrt_weight(audio.pred, audio.target, weight)
        value = plugins.audio_loss(pred=pred, target=target, mask=audio.mask, sigmas=audio.sigmas, batch=batch, args=args)
        if value is None:
            value = masked_mse(pred, target, audio.mask)
        add("loss/audio", torch.as_tensor(value))
    for name, value in plugins.extra_losses(outputs=outputs, batch=batch, args=args) or []:
        key = f"loss/{name}"
        if key in terms:
            raise ValueError(f"extra loss {name!r} from a plugin clashes with an existing loss term")
        add(key, torch.as_tensor(value))
    if total is None:
        raise ValueError("the model returned no trained modality; check --ltx_mode")
    return total, terms
