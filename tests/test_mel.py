"""Log-mel: equal to the official torchaudio-based preprocessing, and right on known signals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltxv2_diffusers.data.mel import HOP_LENGTH, LOG_FLOOR, N_MELS, log_mel, mel_filters
from ltxv2_diffusers.data.synthetic import tone

SR = 16000


def _official_processor():
    """ltx-core's AudioProcessor (the official LTX-2 preprocessing); needs torchaudio to import."""
    try:
        from ltx_core.model.audio_vae.ops import AudioProcessor
    except ImportError as error:  # torchaudio missing: nothing official to compare against here
        pytest.skip(f"ltx-core's AudioProcessor needs torchaudio ({error}); install it to compare")
    return AudioProcessor(target_sample_rate=SR, mel_bins=N_MELS, mel_hop_length=HOP_LENGTH, n_fft=1024)


def test_equals_official_audio_processor():
    processor = _official_processor()
    from ltx_core.model.audio_vae.ops import Audio  # noqa: PLC0415  (only importable with torchaudio)

    generator = torch.Generator().manual_seed(0)
    waveform = torch.cat([0.3 * torch.randn(1, 1, 3 * SR, generator=generator),
                          torch.from_numpy(tone(3 * SR, SR, step_hz=300.0)).view(1, 1, -1)], dim=1)
    reference = processor.waveform_to_mel(Audio(waveform=waveform, sampling_rate=SR))
    ours = log_mel(waveform)
    assert ours.shape == reference.shape == (1, 2, 3 * SR // HOP_LENGTH + 1, N_MELS)
    torch.testing.assert_close(ours, reference, atol=1e-4, rtol=1e-5)


def test_shapes_follow_the_hop():
    for samples in (SR, 80667, 1000):
        mel = log_mel(torch.zeros(2, samples))
        assert mel.shape == (2, samples // HOP_LENGTH + 1, N_MELS)
    assert log_mel(torch.zeros(3, 2, SR)).shape == (3, 2, SR // HOP_LENGTH + 1, N_MELS)
    with pytest.raises(ValueError, match="too short"):
        log_mel(torch.zeros(2, 100))


def test_silence_is_the_log_floor():
    assert torch.equal(log_mel(torch.zeros(2, SR)), torch.full((2, 101, N_MELS), math.log(LOG_FLOOR)))


def _slaney_hz_to_mel(hz: float) -> float:
    # Slaney (Auditory Toolbox) scale: linear below 1 kHz (3 mels per 200 Hz), log above.
    return 3 * hz / 200 if hz < 1000 else 15 + math.log(hz / 1000) / (math.log(6.4) / 27)


@pytest.mark.parametrize("freq", [250.0, 1000.0, 3150.0, 6000.0])
def test_pure_tone_peaks_in_its_mel_band(freq):
    mel = log_mel(torch.from_numpy(tone(SR, SR, base_hz=freq)).repeat(2, 1))
    peak = int(mel[0, 10:-10].mean(0).argmax())
    # 64 bands evenly spaced in Slaney mels from 0 Hz to 8 kHz; band k is centred at point k+1.
    centres = np.linspace(0, _slaney_hz_to_mel(SR / 2), N_MELS + 2)[1:-1]
    assert abs(peak - int(np.abs(centres - _slaney_hz_to_mel(freq)).argmin())) <= 1
    torch.testing.assert_close(mel[0], mel[1])


def test_filters_are_slaney_normalised():
    filters = mel_filters()
    assert filters.shape == (513, N_MELS) and (filters >= 0).all()
    # Slaney norm: each triangle has area 1 in Hz, i.e. peak height 2 / (bandwidth in Hz).
    bin_hz = SR / 1024
    areas = filters.sum(0) * bin_hz
    torch.testing.assert_close(areas[8:], torch.ones(N_MELS - 8), atol=0.08, rtol=0)
