"""IC-LoRA references: found by file stem, cached as their own kinds by the same `datasets` map jobs.

For every item of a dataset with `reference_directory` (or the plural form), the reference is the file of
the same stem (an image or a video) in each reference folder; its latents go to `reference_cache_directory`
(default: the dataset's cache directory) as cache kind `reference`, keyed like the item. A video reference
covers the item's frame window (or `reference_frames` frames from there), taking every `temporal_scale`-th
frame; an image is repeated to that many frames; both are encoded at the item's bucket divided by
`downscale`. Reference audio (`reference_audio_directory`) is the whole audio file of the same stem,
cached as kind `reference_audio`. A missing or unusable reference is reported and only that item skipped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import torch

from .config import SPATIAL_MULTIPLE, TEMPORAL_MULTIPLE, DatasetConfig
from .encoders import AudioLatentEncoder, VideoLatentEncoder, file_stamp
from .items import Item
from .media import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError, decode_audio_window, probe_audio


def _media_stem(item: Item) -> str:
    return Path(item.video_path).stem


def find_reference(folder: str, stem: str, extensions: Iterable[str]) -> str | None:
    """`folder/stem.ext` for the first extension (either case) that exists, else None."""
    for extension in extensions:
        for candidate in (Path(folder) / f"{stem}{extension}", Path(folder) / f"{stem}{extension.upper()}"):
            if candidate.is_file():
                return str(candidate)
    return None


def _stream_files(item: Item, folders, caches, extensions, what: str, bad: list) -> list[tuple[str, str]] | None:
    """`(file, cache directory)` of an item's reference in every stream, or None (and a `bad` entry) when one
    stream has none."""
    found = []
    for folder, cache in zip(folders, caches):
        path = find_reference(folder, _media_stem(item), extensions)
        if path is None:
            bad.append((item.video_path, f"no {what} named {_media_stem(item)}.* in {folder}"))
            return None
        found.append((path, cache))
    return found


def reference_frame_plan(target_frames: int, reference_frames: int | None, temporal_scale: int) -> tuple[int, int]:
    """`(frames decoded from the source span, frames kept)` of a video reference; raises ValueError when the
    span cannot be subsampled onto the target's temporal grid (8k+1 frames, the factor dividing k)."""
    span = int(reference_frames or target_frames)
    if (span - 1) % TEMPORAL_MULTIPLE:
        raise ValueError(f"reference span of {span} frames is not 8k+1")
    if temporal_scale > 1 and ((span - 1) // TEMPORAL_MULTIPLE) % temporal_scale:
        raise ValueError(f"reference span of {span} frames cannot be subsampled by {temporal_scale}: use 8k+1 frames "
                         f"with k a multiple of {temporal_scale} (e.g. {8 * temporal_scale + 1})")
    return span, (span - 1) // temporal_scale + 1


def reference_items(items: list[Item], config: DatasetConfig, downscale: int = 1, temporal_scale: int = 1,
                    reference_frames: int | None = None) -> tuple[list[Item], list[tuple[str, str]]]:
    """Video-reference work items (one per item and reference stream, `cache_directory` = that stream's
    reference cache) and the `(file, reason)` of items whose reference is missing or unusable.

    `reference_frames` (the CLI's) applies where the dataset sets none."""
    refs: list[Item] = []
    bad: list[tuple[str, str]] = []
    entries = {e.index: e for e in config.datasets}
    for item in items:
        entry = entries[item.dataset_index]
        if not entry.reference_directories:
            continue
        w, h = item.bucket
        if w % (SPATIAL_MULTIPLE * downscale) or h % (SPATIAL_MULTIPLE * downscale):
            bad.append((item.video_path, f"bucket {w}x{h} divided by --reference_downscale {downscale} is not a "
                        f"multiple of {SPATIAL_MULTIPLE} pixels; use a resolution that is a multiple of "
                        f"{SPATIAL_MULTIPLE * downscale}"))
            continue
        found = _stream_files(item, entry.reference_directories, entry.reference_cache_directories,
                              (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS), "reference", bad)
        if found is None:
            continue
        frames = entry.reference_frames or reference_frames
        try:
            span, kept = reference_frame_plan(item.num_frames, frames, temporal_scale)
        except ValueError as error:
            bad.append((item.video_path, str(error)))
            continue
        for path, cache in found:
            is_image = Path(path).suffix.lower() in IMAGE_EXTENSIONS
            refs.append(dataclasses.replace(
                item, video_path=path, audio_path=None, cache_directory=cache, is_image=is_image, has_audio=False,
                bucket=(w // downscale, h // downscale), frame_start=0 if is_image else item.frame_start,
                num_frames=kept, frame_stride=1 if is_image else temporal_scale, fps=item.fps / temporal_scale))
    return refs, bad


def reference_audio_items(items: list[Item], config: DatasetConfig) -> tuple[list[Item], list[tuple[str, str]]]:
    """Audio-reference work items (one per item and reference stream) and the items whose reference is missing."""
    refs: list[Item] = []
    bad: list[tuple[str, str]] = []
    entries = {e.index: e for e in config.datasets}
    for item in items:
        entry = entries[item.dataset_index]
        found = _stream_files(item, entry.reference_audio_directories, entry.reference_audio_cache_directories,
                              (*AUDIO_EXTENSIONS, *VIDEO_EXTENSIONS), "reference audio", bad)
        if found is None:
            continue
        refs.extend(dataclasses.replace(item, video_path=path, audio_path=path, cache_directory=cache, has_audio=True)
                    for path, cache in found)
    return refs, bad


class ReferenceLatentEncoder(VideoLatentEncoder):
    """Reference frames -> video VAE means `[128,F,H,W]`, cache kind `reference`; images repeated to F frames."""

    kind = "reference"

    def item_signature(self, item) -> Any:
        return (*super().item_signature(item), item.is_image)

    @staticmethod
    def decode(item) -> torch.Tensor:
        if not item.is_image:
            return VideoLatentEncoder.decode(item)
        frames = VideoLatentEncoder.decode(dataclasses.replace(item, num_frames=1))
        return frames.expand(item.num_frames, -1, -1, -1).contiguous()


class ReferenceAudioEncoder(AudioLatentEncoder):
    """A whole reference audio file -> audio VAE means `[8,Fa,16]`, cache kind `reference_audio`."""

    kind = "reference_audio"

    def item_signature(self, item) -> Any:
        return (item.audio_path, file_stamp(item.audio_path))

    def load_clip(self, item, sample_rate: int):
        info = probe_audio(item.audio_path)
        if info.duration <= 0:
            raise MediaError(item.audio_path, "reference audio has zero length")
        return decode_audio_window(item.audio_path, 0.0, info.duration, sample_rate)
