"""Latent normalization and packing, as `LTX2Pipeline` does it, kept free of any VAE object so training
never needs the VAEs loaded.

Video latents `[B, C, F, H, W]` are normalized per channel (`(x - mean) * scaling_factor / std`) and packed
to tokens `[B, F*H*W, C]` (patch size 1: LTX-2). Audio latents `[B, C, T, M]` are packed to `[B, T, C*M]`
first and normalized per packed feature, which is how the official audio VAE's per-channel statistics
are laid out (128 = 8 channels x 16 latent mel bins).
"""

from __future__ import annotations

import torch


def normalize_video_latents(
    latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, scaling_factor: float = 1.0
) -> torch.Tensor:
    """`(latents - mean) * scaling_factor / std` over channel dim 1 of `[B, C, F, H, W]`."""
    mean = mean.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
    std = std.view(1, -1, 1, 1, 1).to(latents.device, latents.dtype)
    return (latents - mean) * scaling_factor / std


def pack_video_latents(latents: torch.Tensor, patch_size: int = 1, patch_size_t: int = 1) -> torch.Tensor:
    """`[B, C, F, H, W]` → `[B, F/pt * H/p * W/p, C*pt*p*p]` (the order of `LTX2Pipeline._pack_latents`)."""
    b, c, f, h, w = latents.shape
    x = latents.reshape(b, c, f // patch_size_t, patch_size_t, h // patch_size, patch_size, w // patch_size, patch_size)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7).flatten(1, 3)


def unpack_video_latents(
    tokens: torch.Tensor, num_frames: int, height: int, width: int, patch_size: int = 1, patch_size_t: int = 1
) -> torch.Tensor:
    """Inverse of `pack_video_latents`; sizes are in patches (latent size / patch size)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, num_frames, height, width, -1, patch_size_t, patch_size, patch_size)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def pack_audio_latents(latents: torch.Tensor) -> torch.Tensor:
    """`[B, C, T, M]` → `[B, T, C*M]` (all mel bins of one latent frame form one token)."""
    return latents.transpose(1, 2).flatten(2, 3)


def unpack_audio_latents(tokens: torch.Tensor, num_mel_bins: int) -> torch.Tensor:
    """Inverse of `pack_audio_latents`."""
    return tokens.unflatten(2, (-1, num_mel_bins)).transpose(1, 2)


def normalize_audio_tokens(tokens: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """`(tokens - mean) / std` per packed feature of `[B, T, C*M]`."""
    return (tokens - mean.to(tokens.device, tokens.dtype)) / std.to(tokens.device, tokens.dtype)


def packed_audio_stats(stats: torch.Tensor, latent_channels: int, latent_mel_bins: int, what: str) -> torch.Tensor:
    """Audio VAE statistics as one value per packed feature (`latent_channels * latent_mel_bins`).

    The official checkpoints store one per packed feature; diffusers sizes the buffer by `base_channels`,
    which for small test VAEs equals the latent channel count, so per-channel values are spread over
    that channel's mel bins (the packed order is channel-major).
    """
    stats = torch.as_tensor(stats).detach().flatten().float().cpu()
    width = latent_channels * latent_mel_bins
    if stats.numel() == width:
        return stats
    if stats.numel() == latent_channels:
        return stats.repeat_interleave(latent_mel_bins)
    raise ValueError(
        f"audio VAE {what} has {stats.numel()} values; expected {width} (one per packed feature, "
        f"{latent_channels} channels x {latent_mel_bins} mel bins) or {latent_channels} (one per channel)"
    )
