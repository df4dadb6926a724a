"""Listing and validating dataset items: one `Item` per (media file, frame window).

Listing probes every file once (PyAV demux, no full decode) and decides each file's fate up front,
so every caching job lists the same items and reports the same bad files. A bad file never raises:
it lands in `ListingResult.bad` as `(path, reason)`.
"""

from __future__ import annotations

import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import TEMPORAL_MULTIPLE, DatasetConfig, DatasetEntry
from .media import (
    AUDIO_EXTENSIONS,
    DEFAULT_FPS,
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    AudioClip,
    MediaError,
    decode_audio_window,
    decode_video_frames,
    probe_audio,
    probe_video,
    select_bucket,
)

AUDIO_SAMPLE_RATE = 16000


@dataclasses.dataclass(frozen=True)
class Item:
    """One training sample before encoding. Plain fields only: it travels through `datasets` and
    worker processes (`to_dict` / `from_dict` round-trip through Arrow)."""

    key: str  # cache basename: media stem, plus `_{start:05d}-{frames:03d}` for video windows
    dataset_index: int
    video_path: str  # the video, or the image for image datasets
    audio_path: str | None  # separate audio file; None = the video's own audio stream (or no audio)
    caption: str
    frame_start: int
    num_frames: int
    frame_stride: int  # step between consecutive extracted frames (1 = consecutive, as musubi)
    bucket: tuple[int, int]  # (W, H)
    fps: float  # source frame rate
    cache_directory: str
    is_image: bool = False
    has_audio: bool = False  # audio was found and validated for this item's window
    video_start_time: float = 0.0  # first frame's time on the video file's timeline (s)

    @property
    def start_time(self) -> float:
        """Start of the frames' time window, in seconds from the first video frame."""
        return self.frame_start / self.fps

    @property
    def duration(self) -> float:
        """Length of the frames' time window in seconds (`num_frames * frame_stride / fps`)."""
        return self.num_frames * self.frame_stride / self.fps

    @property
    def latent_cache_basename(self) -> str:
        """musubi's per-item video cache name: `{key}_{W:04d}x{H:04d}_ltxv2`."""
        return f"{self.key}_{self.bucket[0]:04d}x{self.bucket[1]:04d}_ltxv2"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Item":
        """Rebuild from `to_dict` output or an Arrow row (lists back to tuples, extra columns ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in row.items() if k in names}
        values["bucket"] = tuple(int(v) for v in values["bucket"])
        return cls(**values)


@dataclasses.dataclass
class ListingResult:
    """Items in a stable order (dataset, file name, window) and the files that were skipped."""

    items: list[Item]
    bad: list[tuple[str, str]]  # (path, reason)

    def summary(self) -> str:
        lines = [f"{len(self.items)} items, {len(self.bad)} skipped files"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.bad]
        return "\n".join(lines)


def list_items(config: DatasetConfig, mode: Any = "video", max_workers: int | None = None,
               progress: bool = False) -> ListingResult:
    """List and validate every item of every dataset in `config` for a training `mode`
    (`video`, `av`, `audio`, or an `LtxMode`). Audio is required (and its window checked) in `av`
    and `audio` modes; a file without it is reported, not raised. `progress` shows a bar per file.
    """
    needs_audio = str(getattr(mode, "value", mode)).lower() in ("av", "audio")
    jobs = []
    bad: list[tuple[str, str]] = []
    for entry in config.datasets:
        files, problems = _media_files(entry)
        bad.extend(problems)
        jobs.extend((entry, path) for path in files)
    workers = max_workers or min(8, os.cpu_count() or 1)
    # PyAV releases the GIL while demuxing, so threads overlap the I/O of many small files.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda job: _items_for_file(job[0], job[1], needs_audio), jobs)
        results = list(tqdm(results, total=len(jobs), desc="listing media", unit="file", disable=not progress))
    items: list[Item] = []
    owners: dict[tuple[str, str], str] = {}  # (cache directory, key) -> file that produced it
    for (entry, path), (file_items, problem) in zip(jobs, results):
        if problem is not None:
            bad.append(problem)
            continue
        clash = next((owners[(it.cache_directory, it.key)] for it in file_items
                      if (it.cache_directory, it.key) in owners), None)
        if clash is not None:
            # Caches are named by stem: a.mp4 and a.mov would overwrite each other's files.
            bad.append((path, f"same name as {Path(clash).name} in one cache directory; rename one of them"))
            continue
        owners.update(((it.cache_directory, it.key), path) for it in file_items)
        items.extend(file_items)
    return ListingResult(items=items, bad=bad)


def load_video_frames(item: Item) -> torch.Tensor:
    """The item's frames as float32 `[F,3,H,W]` in [-1, 1] at `item.bucket`."""
    return decode_video_frames(item.video_path, item.frame_start, item.num_frames, item.bucket, item.frame_stride)


def load_audio(item: Item, sample_rate: int = AUDIO_SAMPLE_RATE) -> AudioClip:
    """The item's audio cut to exactly its frames' time window, stereo, at `sample_rate`; the clip
    also says how many samples are real (the rest is zero padding past the end of the source)."""
    if item.is_image:
        raise MediaError(item.video_path, "an image has no audio")
    if item.audio_path is None:
        # Same container: audio and video share one timeline.
        return decode_audio_window(item.video_path, item.video_start_time + item.start_time, item.duration, sample_rate)
    return decode_audio_window(item.audio_path, item.start_time, item.duration, sample_rate)


def load_audio_waveform(item: Item, sample_rate: int = AUDIO_SAMPLE_RATE) -> torch.Tensor:
    """The item's audio as float32 `[2, S]`, `S = round(duration * sample_rate)`."""
    return load_audio(item, sample_rate).waveform


# ---------------------------------------------------------------- listing internals


def _media_files(entry: DatasetEntry) -> tuple[list[str], list[tuple[str, str]]]:
    """Media files of a dataset directory (sorted, non-recursive, as musubi) and the ones refused early."""
    extensions = IMAGE_EXTENSIONS if entry.is_image_dataset else VIDEO_EXTENSIONS
    files, problems = [], []
    for path in sorted(Path(entry.media_directory).iterdir()):
        if not path.is_file() or path.suffix.lower() not in extensions:
            continue
        files.append(str(path))
    if not files:
        kind = "image" if entry.is_image_dataset else "video"
        problems.append((entry.media_directory, f"no {kind} files ({', '.join(extensions)})"))
    return files, problems


def _items_for_file(entry: DatasetEntry, path: str, needs_audio: bool) -> tuple[list[Item], tuple[str, str] | None]:
    try:
        return _items_for_file_or_raise(entry, path, needs_audio), None
    except MediaError as error:
        return [], (error.path, error.reason)


def _items_for_file_or_raise(entry: DatasetEntry, path: str, needs_audio: bool) -> list[Item]:
    caption = read_caption(path, entry.caption_extension)
    info = probe_video(path)
    if info.width < 32 or info.height < 32:
        raise MediaError(path, f"{info.width}x{info.height} is smaller than 32x32")
    bucket = select_bucket((info.width, info.height), entry.resolution, entry.enable_bucket, entry.bucket_no_upscale)
    if bucket[0] < 32 or bucket[1] < 32:
        raise MediaError(path, f"bucket {bucket[0]}x{bucket[1]} is too small for a {info.width}x{info.height} source")
    stem = Path(path).stem
    common = dict(dataset_index=entry.index, caption=caption, bucket=bucket, cache_directory=entry.cache_directory)

    if entry.is_image_dataset:
        if needs_audio:
            raise MediaError(path, "an image has no audio, and this mode trains audio")
        # a still has no frame rate of its own; the batch contract's "unknown" rate is 24
        return [Item(key=stem, video_path=path, audio_path=None, frame_start=0, num_frames=1, frame_stride=1,
                     fps=DEFAULT_FPS, is_image=True, **common)]

    windows = frame_windows(info.num_frames, entry)
    if not windows:
        wanted = (f"at least {min(entry.target_frames)} frames (target_frames {list(entry.target_frames)})"
                  if entry.frame_extraction != "full" else "at least 1 frame")
        raise MediaError(path, f"video has {info.num_frames} frames, {entry.frame_extraction!r} extraction needs {wanted}")

    try:
        audio_path, audio_start, audio_duration = find_audio(path, entry, info)
    except MediaError:
        if needs_audio:
            raise
        # a broken sidecar does not spoil the video: fall back to its own track, if any
        audio_path, audio_start, audio_duration = None, 0.0, 0.0
        if info.audio is not None:
            audio_start, audio_duration = info.audio.start_time - info.start_time, info.audio.duration
    if needs_audio and audio_path is None and info.audio is None:
        raise MediaError(path, "no audio: no audio stream in the video and no same-name audio file "
                               f"({', '.join(AUDIO_EXTENSIONS)}) beside it" +
                               (f" or in {entry.audio_directory}" if entry.audio_directory else ""))
    has_audio = audio_path is not None or info.audio is not None
    if has_audio and audio_duration <= 0:
        if needs_audio:
            raise MediaError(audio_path or path, "audio has zero length")
        has_audio = False

    items = []
    for start, count in windows:
        window_from = start / info.fps
        if needs_audio and window_from >= audio_start + audio_duration:
            continue  # the audio ends before this window starts; other windows may still be fine
        items.append(Item(
            key=f"{stem}_{start:05d}-{count:03d}", video_path=path, audio_path=audio_path, frame_start=start,
            num_frames=count, frame_stride=1, fps=info.fps, has_audio=has_audio,
            video_start_time=info.start_time, **common))
    if not items:
        raise MediaError(audio_path or path, f"audio ({audio_duration:.2f} s) ends before every frame window")
    return items


def frame_windows(num_frames: int, entry: DatasetEntry) -> list[tuple[int, int]]:
    """`(start, count)` windows for a video of `num_frames`, following musubi's `frame_extraction`:
    head = first `target_frames`; chunk = consecutive non-overlapping windows; slide = windows every
    `frame_stride` frames; uniform = `frame_sample` windows evenly spread; full = the whole video up to
    `max_frames`, cut to 8k+1."""
    windows: list[tuple[int, int]] = []
    mode = entry.frame_extraction
    if mode == "full":
        count = min(num_frames, entry.max_frames)
        count = (count - 1) // TEMPORAL_MULTIPLE * TEMPORAL_MULTIPLE + 1
        return [(0, count)] if count >= 1 else []
    for target in entry.target_frames:
        if num_frames < target:
            continue
        if mode == "head":
            windows.append((0, target))
        elif mode == "chunk":
            windows.extend((i, target) for i in range(0, num_frames - target + 1, target))
        elif mode == "slide":
            windows.extend((i, target) for i in range(0, num_frames - target + 1, entry.frame_stride))
        elif mode == "uniform":
            starts = np.linspace(0, num_frames - target, entry.frame_sample, dtype=int)
            windows.extend((int(i), target) for i in starts)
        else:
            raise ValueError(f"frame_extraction {mode!r} is not supported")
    # uniform sampling of a short clip, or a repeated target, can give one window twice: keep it once
    return list(dict.fromkeys(windows))


def read_caption(media_path: str, caption_extension: str) -> str:
    """The caption beside a media file (`stem + caption_extension`), stripped; `MediaError` if missing or empty."""
    caption_path = Path(media_path).with_suffix(caption_extension)
    if not caption_path.is_file():
        raise MediaError(media_path, f"missing caption {caption_path.name}")
    try:
        # utf-8-sig: editors on Windows start files with a byte-order mark, which is no part of the caption
        caption = caption_path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        raise MediaError(str(caption_path), "caption is not UTF-8 text") from None
    if not caption:  # rejected here, so every cache job reports it and none caches the item
        raise MediaError(str(caption_path), "caption is empty")
    return caption


def find_audio(video_path: str, entry: DatasetEntry, info) -> tuple[str | None, float, float]:
    """Where a video's audio comes from: a same-name audio file in `audio_directory`, else beside the
    video, else the video's own stream. Returns (file or None, start on the video's clock, duration)."""
    stem = Path(video_path).stem
    folders = ([entry.audio_directory] if entry.audio_directory else []) + [str(Path(video_path).parent)]
    for folder in folders:
        for extension in AUDIO_EXTENSIONS:
            for candidate in _case_variants(Path(folder), stem, extension):
                if candidate.is_file() and str(candidate) != video_path:
                    audio = probe_audio(str(candidate))
                    return str(candidate), 0.0, audio.duration
    if info.audio is not None:
        # On the video's clock (first frame = 0) so windows compare directly.
        return None, info.audio.start_time - info.start_time, info.audio.duration
    return None, 0.0, 0.0


def _case_variants(folder: Path, stem: str, extension: str) -> Iterable[Path]:
    yield folder / f"{stem}{extension}"
    yield folder / f"{stem}{extension.upper()}"
