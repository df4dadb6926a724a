"""Log-mel spectrograms exactly as LTX-2's audio VAE expects them, without torchaudio.

The reference (ltx-core's `AudioProcessor`, diffusers' Echo encoder) is torchaudio's
`MelSpectrogram(n_fft=1024, win_length=1024, hop_length=160, f_min=0, f_max=rate/2, n_mels=64,
window=hann, center=True, pad_mode="reflect", power=1, mel_scale="slaney", norm="slaney")`
followed by `log(clamp(mel, 1e-5))`. torch.stft plus transformers' Slaney filter bank computes the
same thing.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

SAMPLE_RATE = 16000
N_FFT = 1024
HOP_LENGTH = 160
N_MELS = 64
LOG_FLOOR = 1e-5


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS,
                f_max: float | None = None) -> torch.Tensor:
    """Slaney-scale, Slaney-normalised triangular filters `[n_fft//2+1, n_mels]` (float32)."""
    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=float(sample_rate / 2 if f_max is None else f_max),
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(np.asarray(bank, dtype=np.float32))


def log_mel(
    waveform: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = N_FFT,
    hop_length: int = HOP_LENGTH,
    n_mels: int = N_MELS,
    f_max: float | None = None,
) -> torch.Tensor:
    """Log-mel of `[C, S]` (or `[B, C, S]`) audio → `[C, T, n_mels]` (or `[B, C, T, n_mels]`),
    `T = S // hop_length + 1`. Computed in float32; `f_max` defaults to Nyquist (8 kHz at 16 kHz)."""
    if waveform.dim() not in (2, 3):
        raise ValueError(f"log_mel expects [C, S] or [B, C, S] audio, got shape {tuple(waveform.shape)}")
    if waveform.shape[-1] <= n_fft // 2:
        # reflect padding needs more samples than half a window
        raise ValueError(f"audio of {waveform.shape[-1]} samples is too short for a log-mel (needs > {n_fft // 2})")
    leading = waveform.shape[:-1]
    flat = waveform.reshape(-1, waveform.shape[-1]).float()
    window = torch.hann_window(n_fft, device=flat.device)
    spec = torch.stft(flat, n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window=window,
                      center=True, pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
    magnitude = spec.abs()  # power 1
    filters = mel_filters(sample_rate, n_fft, n_mels, f_max).to(magnitude.device)
    mel = torch.matmul(magnitude.transpose(-1, -2), filters)  # [N, T, n_mels]
    mel = torch.log(torch.clamp(mel, min=LOG_FLOOR))
    return mel.reshape(*leading, mel.shape[-2], n_mels)
