"""Training modes: which modalities a run trains and which the model sees."""

from __future__ import annotations

import enum


class LtxMode(str, enum.Enum):
    """`video` = LTXV (video only), `av` = LTXAV (joint audio+video), `audio` = audio only."""

    VIDEO = "video"
    AV = "av"
    AUDIO = "audio"

    @property
    def has_video(self) -> bool:
        return self is not LtxMode.AUDIO

    @property
    def has_audio(self) -> bool:
        return self is not LtxMode.VIDEO

    @property
    def isolated(self) -> bool:
        """Single-modality modes run the model with modalities isolated."""
        return self is not LtxMode.AV

    def __str__(self) -> str:
        return self.value


MODE_CHOICES = tuple(m.value for m in LtxMode)
# musubi-tuner's short spellings (`--ltx2_mode v`, its default).
MODE_ALIASES = {"v": LtxMode.VIDEO, "a": LtxMode.AUDIO, "va": LtxMode.AV}


def resolve_mode(ltx_mode: str | None, ltxv2_audio_video: bool | None = None) -> LtxMode:
    """Resolve `--ltx_mode` and the old `--ltxv2_audio_video` flag into one `LtxMode`.

    `--ltxv2_audio_video` alone means `av`; neither means `video`; a contradiction is an error.
    """
    if ltx_mode is None:
        return LtxMode.AV if ltxv2_audio_video else LtxMode.VIDEO
    try:
        mode = MODE_ALIASES.get(str(ltx_mode).lower()) or LtxMode(str(ltx_mode).lower())
    except ValueError:
        raise ValueError(
            f"--ltx_mode {ltx_mode!r} is not a mode; choose one of {', '.join(MODE_CHOICES)}."
        ) from None
    if ltxv2_audio_video and mode is LtxMode.VIDEO:
        raise ValueError(
            "--ltxv2_audio_video contradicts --ltx_mode video: drop --ltxv2_audio_video for video-only "
            "training, or use --ltx_mode av for audio+video."
        )
    return mode
