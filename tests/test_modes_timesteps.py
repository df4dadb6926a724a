"""`--ltx_mode` / `--ltxv2_audio_video` resolution and `--ltxv2_timestep_format` parsing and conversion."""

from __future__ import annotations

import pytest
import torch

from ltxv2_diffusers.modes import MODE_CHOICES, LtxMode, resolve_mode
from ltxv2_diffusers.timesteps import (
    FORMAT_CHOICES,
    TimestepFormat,
    parse_timestep_format,
    sigmas_to_timesteps,
    timesteps_to_sigmas,
)


@pytest.mark.parametrize(
    "ltx_mode, audio_video, expected",
    [
        (None, None, LtxMode.VIDEO),
        (None, False, LtxMode.VIDEO),
        (None, True, LtxMode.AV),
        ("video", False, LtxMode.VIDEO),
        ("av", True, LtxMode.AV),
        ("AV", None, LtxMode.AV),
        ("audio", None, LtxMode.AUDIO),
        ("audio", True, LtxMode.AUDIO),  # audio-only needs audio-video caches: no contradiction
    ],
)
def test_resolve_mode(ltx_mode, audio_video, expected):
    assert resolve_mode(ltx_mode, audio_video) is expected


def test_mode_contradiction_and_unknown_mode_are_errors():
    with pytest.raises(ValueError, match="contradicts --ltx_mode video"):
        resolve_mode("video", True)
    with pytest.raises(ValueError, match="video, av, audio"):
        resolve_mode("image", None)


def test_mode_properties():
    assert MODE_CHOICES == ("video", "av", "audio")
    assert (LtxMode.VIDEO.has_video, LtxMode.VIDEO.has_audio, LtxMode.VIDEO.isolated) == (True, False, True)
    assert (LtxMode.AV.has_video, LtxMode.AV.has_audio, LtxMode.AV.isolated) == (True, True, False)
    assert (LtxMode.AUDIO.has_video, LtxMode.AUDIO.has_audio, LtxMode.AUDIO.isolated) == (False, True, True)
    assert str(LtxMode.AV) == "av"


@pytest.mark.parametrize("missing", [None, ""])
def test_missing_timestep_format_lists_the_three_choices(missing):
    with pytest.raises(ValueError) as e:
        parse_timestep_format(missing)
    msg = str(e.value)
    assert "--ltxv2_timestep_format" in msg and "no default" in msg
    assert all(choice in msg for choice in ("flowmatch_1_1000", "legacy_0_1000", "sd3_0_1"))


def test_unknown_timestep_format():
    with pytest.raises(ValueError, match="unknown; choose one of flowmatch_1_1000, legacy_0_1000, sd3_0_1"):
        parse_timestep_format("ddpm")
    assert parse_timestep_format("SD3_0_1") is TimestepFormat.SD3_0_1
    assert parse_timestep_format(TimestepFormat.LEGACY_0_1000) is TimestepFormat.LEGACY_0_1000
    assert FORMAT_CHOICES == ("flowmatch_1_1000", "legacy_0_1000", "sd3_0_1")


@pytest.mark.parametrize(
    "fmt, timesteps, sigmas",
    [
        ("flowmatch_1_1000", [1.0, 251.0, 1000.0], [0.0, 0.25, 0.999]),
        ("legacy_0_1000", [0.0, 250.0, 1000.0], [0.0, 0.25, 1.0]),
        ("sd3_0_1", [0.0, 0.25, 1.0], [0.0, 0.25, 1.0]),
    ],
)
def test_conversion_and_inverse(fmt, timesteps, sigmas):
    s = timesteps_to_sigmas(torch.tensor(timesteps), fmt)
    assert s.dtype == torch.float32
    assert torch.allclose(s, torch.tensor(sigmas))
    assert torch.allclose(sigmas_to_timesteps(s, fmt), torch.tensor(timesteps), atol=1e-4)
    # integer timesteps are accepted and converted to float sigmas
    if fmt != "sd3_0_1":
        assert timesteps_to_sigmas(torch.tensor([int(timesteps[1])]), fmt).is_floating_point()


@pytest.mark.parametrize(
    "fmt, bad",
    [
        ("flowmatch_1_1000", 0.0),
        ("flowmatch_1_1000", 1000.5),
        ("legacy_0_1000", -1.0),
        ("legacy_0_1000", 1001.0),
        ("sd3_0_1", 1.5),
        ("sd3_0_1", -0.01),
        ("sd3_0_1", float("nan")),
    ],
)
def test_out_of_range_is_an_error_not_a_clamp(fmt, bad):
    with pytest.raises(ValueError, match=f"outside the {fmt} range"):
        timesteps_to_sigmas(torch.tensor([0.5 if fmt == "sd3_0_1" else 500.0, bad]), fmt)
