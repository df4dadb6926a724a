"""Token layout of conditioned training: which tokens are clean, and where reference tokens sit.

The layout follows the official LTX-2 trainer and inference (`ltx_trainer.training_strategies`,
`ltx_core.conditioning.types`), since that is what an IC-LoRA or I2V LoRA is fed at inference:

- In-place conditions (first frame, prefix / suffix extension): the target's own tokens stay clean;
  they get timestep 0 and no loss. Expressed as a per-token sigma of 0 (see models/adapter.py).
- Reference tokens (IC-LoRA): the clean reference latent is appended after the target tokens along
  the token axis with timestep 0 and no loss. Its positions are its own grid's positions with the
  spatial axes multiplied by the downscale factor; with a temporal scale factor S the reference's time
  axis runs at fps / S and is shifted back by (S - 1) / fps (clamped at 0) so the reference's last
  patch ends where the target's does. Attention is bidirectional and positional, so appending (as
  inference does) and prepending (as the official trainer does) give the same predictions.
- Audio reference tokens: appended after the target audio tokens at positions starting at 0, or, with
  negative positions (the official Dub-It pipeline, musubi's `--audio_ref_use_negative_positions`),
  shifted to end 0.04 s before 0.
"""

from __future__ import annotations

import torch

# Gap the official Dub-It pipeline leaves between negative reference audio positions and 0 (seconds).
AUDIO_REFERENCE_GAP_S = 0.04


def temporal_mask(batch_size: int, frames: int, tokens_per_frame: int, prefix: int = 0, suffix: int = 0,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Bool `[B, frames * tokens_per_frame]`: True on the first `prefix` and last `suffix` latent frames."""
    mask = torch.zeros(frames, dtype=torch.bool, device=device)
    if prefix:
        mask[:prefix] = True
    if suffix:
        mask[frames - suffix:] = True
    return mask.repeat_interleave(tokens_per_frame).unsqueeze(0).expand(batch_size, -1).clone()


def conditioned_sigmas(sigmas: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Per-token sigmas `[B, N]`: the sampled sigma (`[B]` or `[B, N]`), 0 where `clean` is True."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    clean = clean.to(sigmas.device)
    if sigmas.ndim == 1:
        sigmas = sigmas.unsqueeze(1).expand(clean.shape)
    return torch.where(clean, torch.zeros_like(sigmas), sigmas)


def infer_reference_scales(target_shape: tuple[int, int, int], reference_shape: tuple[int, int, int]) -> tuple[int, int]:
    """`(spatial, temporal)` factors between a target and a reference latent grid `(F, H, W)`.

    As the official trainer infers them: spatial = target H / reference H (uniform, exact); temporal =
    (target F - 1) / (reference F - 1), since the first latent frame holds one pixel frame and each
    later one eight; a one-frame reference (an image) has temporal factor 1.
    """
    (tf, th, tw), (rf, rh, rw) = target_shape, reference_shape
    if (th, tw) == (rh, rw):
        spatial = 1
    else:
        if rh > th or rw > tw or th % rh or tw % rw or th // rh != tw // rw:
            raise ValueError(
                f"reference latents {rh}x{rw} (HxW) are not the target's {th}x{tw} divided by one whole factor; "
                "re-cache the references with the --reference_downscale the run uses"
            )
        spatial = th // rh
    if rf == tf or rf <= 1 or tf <= 1:
        temporal = 1
    else:
        if (tf - 1) % (rf - 1):
            raise ValueError(
                f"reference has {rf} latent frames, target {tf}: (target - 1) must be a multiple of (reference - 1); "
                "re-cache the references with the --reference_temporal_scale the run uses"
            )
        temporal = (tf - 1) // (rf - 1)
    return spatial, temporal


def reference_video_coords(base_coords: torch.Tensor, fps: float | torch.Tensor, target_time_end: torch.Tensor,
                           spatial_scale: int = 1, temporal_scale: int = 1) -> torch.Tensor:
    """Positions `[B, 3, Nr, 2]` of reference tokens from their own grid's positions at fps 1.

    `base_coords` are pixel-space bounds of the reference grid with the time axis in frames (diffusers'
    `prepare_video_coords(..., fps=1.0)`); `fps` the target's frame rate (a float or `[B]`);
    `target_time_end` the end of the target's first patch on the time axis, `[B, 1, 1]` (= 1 / fps).
    """
    coords = base_coords.clone()
    if isinstance(fps, torch.Tensor):
        fps_t = fps.to(coords.device, torch.float32).reshape(-1, 1, 1)
        coords[:, 0] = coords[:, 0] / (fps_t / temporal_scale)
    else:
        coords[:, 0] = coords[:, 0] / (float(fps) / temporal_scale)
    if temporal_scale != 1:
        coords[:, 0] = torch.clamp(coords[:, 0] - (temporal_scale - 1) * target_time_end, min=0)
    if spatial_scale != 1:
        coords[:, 1:] = coords[:, 1:] * spatial_scale
    return coords


def reference_audio_coords(coords: torch.Tensor, negative: bool = False) -> torch.Tensor:
    """Positions `[B, 1, Nr, 2]` of reference audio tokens: their own positions from 0 or, `negative`,
    moved to end `AUDIO_REFERENCE_GAP_S` before 0."""
    if not negative:
        return coords
    end = coords[:, :, -1, 1].amax()
    return coords - end - AUDIO_REFERENCE_GAP_S
