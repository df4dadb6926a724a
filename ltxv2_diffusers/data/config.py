"""dataset.toml in the musubi-tuner schema: `[general]` defaults and `[[datasets]]` entries.

Semantics follow musubi-tuner (`dataset/config_utils.py`): a `[[datasets]]` value wins over
`[general]`, which wins over the built-in default; `resolution` is `[W, H]` or one int for a
square; `cache_directory` defaults to the media directory and must differ between datasets.
LTX-2 specifics: sizes are multiples of 32 and frame counts 8k+1 (the video VAE's compression).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from pathlib import Path
from typing import Any

FRAME_EXTRACTIONS = ("head", "chunk", "slide", "uniform", "full")
SPATIAL_MULTIPLE = 32
MAX_SIDE = 8192  # frames are scaled by FFmpeg, whose image size limit a larger side can exceed
TEMPORAL_MULTIPLE = 8

# Keys valid in `[general]` and in each `[[datasets]]` entry.
_SHARED_KEYS = {
    "caption_extension",
    "batch_size",
    "num_repeats",
    "resolution",
    "enable_bucket",
    "bucket_no_upscale",
    "target_frames",
    "frame_extraction",
    "frame_stride",
    "frame_sample",
    "max_frames",
    "cache_directory",  # musubi's own example sets it in [general]
}
_DATASET_ONLY_KEYS = {"video_directory", "image_directory", "audio_directory"}
# IC-LoRA references (musubi's keys): matched to items by file stem; singular or plural (one per reference
# stream). Cache directories may also be set in [general], as musubi allows.
_REFERENCE_KEYS = {
    "reference_directory": "reference_directories",
    "reference_cache_directory": "reference_cache_directories",
    "reference_audio_directory": "reference_audio_directories",
    "reference_audio_cache_directory": "reference_audio_cache_directories",
}
_REFERENCE_GENERAL_KEYS = {"reference_cache_directory", "reference_cache_directories", "reference_audio_cache_directory",
                           "reference_audio_cache_directories", "reference_frames"}
_DATASET_ONLY_KEYS |= set(_REFERENCE_KEYS) | set(_REFERENCE_KEYS.values()) | {"reference_frames"}
# musubi keys that have a meaning there but no implementation here: a clear error, not "unknown".
_UNSUPPORTED_MUSUBI_KEYS = {
    "video_jsonl_file": "use video_directory with caption files beside the videos",
    "image_jsonl_file": "use image_directory with caption files beside the images",
    "control_directory": "control videos are not used by LTX-2 LoRA training",
    "source_fps": "frames are taken at the source frame rate; re-encode the video to change it",
    "target_fps": "frames are taken at the source frame rate (recorded per item); re-encode the video to change it",
    "fp_latent_window_size": "FramePack options do not apply to LTX-2",
    "fp_1f_clean_indices": "FramePack options do not apply to LTX-2",
    "fp_1f_target_index": "FramePack options do not apply to LTX-2",
    "fp_1f_no_post": "FramePack options do not apply to LTX-2",
    "multiple_target": "not used by LTX-2",
    "no_resize_control": "control images are not used by LTX-2",
    "control_resolution": "control images are not used by LTX-2",
}
# musubi keys accepted and ignored because they change nothing here.
_IGNORED_MUSUBI_KEYS = {"skip_corrupted_cache", "debug_dataset"}

_DEFAULTS: dict[str, Any] = {
    "caption_extension": ".txt",
    "batch_size": 1,
    "num_repeats": 1,
    "resolution": (960, 544),
    "enable_bucket": False,
    "bucket_no_upscale": False,
    "target_frames": (1,),
    "frame_extraction": "head",
    "frame_stride": 1,
    "frame_sample": 1,
    "max_frames": 129,
}


class DatasetConfigError(ValueError):
    """A dataset.toml problem; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """One resolved `[[datasets]]` entry (general defaults applied, paths absolute)."""

    index: int
    video_directory: str | None
    image_directory: str | None
    audio_directory: str | None
    cache_directory: str
    caption_extension: str
    resolution: tuple[int, int]  # (W, H)
    target_frames: tuple[int, ...]
    frame_extraction: str
    frame_stride: int
    frame_sample: int
    max_frames: int
    batch_size: int
    num_repeats: int
    enable_bucket: bool
    bucket_no_upscale: bool
    # IC-LoRA references: media folders, and where their latents are cached (default: cache_directory,
    # in caches of their own kind), one per reference stream.
    reference_directories: tuple[str, ...] = ()
    reference_cache_directories: tuple[str, ...] = ()
    reference_audio_directories: tuple[str, ...] = ()
    reference_audio_cache_directories: tuple[str, ...] = ()
    reference_frames: int | None = None  # frames of each video reference (default: the item's frame count)

    @property
    def is_image_dataset(self) -> bool:
        return self.image_directory is not None

    @property
    def media_directory(self) -> str:
        return self.image_directory if self.image_directory is not None else self.video_directory


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """A whole dataset.toml: its path and the resolved dataset entries."""

    path: str
    datasets: tuple[DatasetEntry, ...]


def load_dataset_config(path: str | os.PathLike, require_media: bool = True) -> DatasetConfig:
    """Read and validate a musubi-style dataset.toml; raise `DatasetConfigError` naming file and key.

    Training reads only caches, so it passes `require_media=False`: media folders that are gone
    (deleted after caching) are then no error."""
    path = Path(path)
    if not path.is_file():
        raise DatasetConfigError(f"--dataset_config {path}: file not found.")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise DatasetConfigError(f"{path}: not valid TOML ({error}).") from None
    return parse_dataset_config(raw, path, require_media)


def parse_dataset_config(raw: dict, path: str | os.PathLike = "<dataset config>",
                         require_media: bool = True) -> DatasetConfig:
    """Validate an already-parsed config dict (as from TOML); `path` is used in messages and for paths."""
    path = Path(path)
    where = str(path)
    for key in raw:
        if key not in ("general", "datasets"):
            raise DatasetConfigError(f"{where}: unknown top-level key {key!r}; expected [general] and [[datasets]].")
    general = raw.get("general", {})
    if not isinstance(general, dict):
        raise DatasetConfigError(f"{where}: 'general' must be a table ([general]).")
    _check_keys(general, _SHARED_KEYS | _REFERENCE_GENERAL_KEYS, where, "[general]")
    entries = raw.get("datasets")
    if not entries or not isinstance(entries, list):
        raise DatasetConfigError(f"{where}: no [[datasets]] entries; add at least one with video_directory or image_directory.")

    datasets = []
    for index, entry in enumerate(entries):
        section = f"[[datasets]] #{index}"
        if not isinstance(entry, dict):
            raise DatasetConfigError(f"{where}: {section} must be a table.")
        _check_keys(entry, _SHARED_KEYS | _DATASET_ONLY_KEYS, where, section)
        datasets.append(_resolve_entry(index, entry, general, path, section, require_media))

    seen: dict[str, int] = {}
    for entry in datasets:
        other = seen.setdefault(os.path.normcase(entry.cache_directory), entry.index)
        if other != entry.index:
            raise DatasetConfigError(
                f"{where}: [[datasets]] #{other} and #{entry.index} share cache_directory {entry.cache_directory!r} "
                "(it defaults to the media directory); give each dataset its own cache_directory."
            )
    return DatasetConfig(path=str(path), datasets=tuple(datasets))


def _check_keys(table: dict, allowed: set[str], where: str, section: str) -> None:
    for key in table:
        if key in allowed or key in _IGNORED_MUSUBI_KEYS:
            continue
        if key in _UNSUPPORTED_MUSUBI_KEYS:
            raise DatasetConfigError(f"{where}: {section} key {key!r} is not supported: {_UNSUPPORTED_MUSUBI_KEYS[key]}.")
        if key in _DATASET_ONLY_KEYS:
            raise DatasetConfigError(f"{where}: {section} key {key!r} belongs in each [[datasets]] entry, not [general].")
        raise DatasetConfigError(
            f"{where}: {section} has unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}."
        )


def _resolve_entry(index: int, entry: dict, general: dict, path: Path, section: str,
                   require_media: bool = True) -> DatasetEntry:
    where = str(path)

    def value(key: str) -> Any:
        if key in entry:
            return entry[key]
        if key in general:
            return general[key]
        return _DEFAULTS[key]

    def origin(key: str) -> str:
        return section if key in entry else "[general]" if key in general else "default"

    def typed(key: str, kind: type) -> Any:
        v = value(key)
        # bool is an int subclass in Python: `batch_size = true` must not pass as 1.
        if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
            raise DatasetConfigError(f"{where}: {origin(key)} key {key!r} must be {kind.__name__}, got {v!r}.")
        return v

    def positive(key: str) -> int:
        v = typed(key, int)
        if v < 1:
            raise DatasetConfigError(f"{where}: {origin(key)} key {key!r} must be >= 1, got {v}.")
        return v

    has_video, has_image = "video_directory" in entry, "image_directory" in entry
    if has_video == has_image:
        raise DatasetConfigError(
            f"{where}: {section} needs exactly one of 'video_directory' or 'image_directory'"
            + (" (both are set)." if has_video else " (neither is set).")
        )
    media_key = "video_directory" if has_video else "image_directory"
    media_dir = _directory(entry[media_key], path, f"{section} key {media_key!r}", must_exist=require_media)
    # A relative path that does not exist yet (a new cache folder) goes where the media folder was found.
    base = _base_of(entry[media_key], path)
    audio_dir = None
    if "audio_directory" in entry:
        if has_image:
            raise DatasetConfigError(f"{where}: {section} key 'audio_directory' needs a video dataset; images carry no audio.")
        audio_dir = _directory(entry["audio_directory"], path, f"{section} key 'audio_directory'",
                               must_exist=require_media)
    if "cache_directory" in entry or "cache_directory" in general:
        cache_dir = _directory(value("cache_directory"), path, f"{origin('cache_directory')} key 'cache_directory'",
                               must_exist=False, base=base)
    else:
        cache_dir = media_dir

    resolution = value("resolution")
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        resolution = (resolution, resolution)
    if (
        not isinstance(resolution, (list, tuple))
        or len(resolution) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in resolution)
    ):
        raise DatasetConfigError(f"{where}: {origin('resolution')} key 'resolution' must be [W, H] or one int, got {resolution!r}.")
    for name, size in zip(("width", "height"), resolution):
        if size < SPATIAL_MULTIPLE or size % SPATIAL_MULTIPLE:
            raise DatasetConfigError(
                f"{where}: {origin('resolution')} key 'resolution' {name} {size} is not a positive multiple of "
                f"{SPATIAL_MULTIPLE} (LTX-2's VAE downsamples by 32); try {max(SPATIAL_MULTIPLE, round(size / 32) * 32)}."
            )
        if size > MAX_SIDE:
            raise DatasetConfigError(
                f"{where}: {origin('resolution')} key 'resolution' {name} {size} is larger than {MAX_SIDE} pixels, "
                "more than FFmpeg's scaler takes (every file would fail with 'Invalid argument'); use a smaller one."
            )

    target_frames = value("target_frames")
    if isinstance(target_frames, int) and not isinstance(target_frames, bool):
        target_frames = [target_frames]
    if not isinstance(target_frames, (list, tuple)) or not target_frames:
        raise DatasetConfigError(f"{where}: {origin('target_frames')} key 'target_frames' must be a non-empty list of ints.")
    for frames in target_frames:
        if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1 or (frames - 1) % TEMPORAL_MULTIPLE:
            raise DatasetConfigError(
                f"{where}: {origin('target_frames')} key 'target_frames' value {frames!r} is not 8k+1 "
                "(1, 9, 17, ..., 121); LTX-2's VAE compresses time by 8."
            )
    if has_image and tuple(target_frames) != (1,) and "target_frames" in entry:
        raise DatasetConfigError(f"{where}: {section} key 'target_frames' has no meaning for an image dataset (images are one frame).")

    extraction = typed("frame_extraction", str)
    if extraction not in FRAME_EXTRACTIONS:
        raise DatasetConfigError(
            f"{where}: {origin('frame_extraction')} key 'frame_extraction' is {extraction!r}; choose one of {', '.join(FRAME_EXTRACTIONS)}."
        )
    caption_extension = typed("caption_extension", str)
    if not caption_extension:
        raise DatasetConfigError(f"{where}: {origin('caption_extension')} key 'caption_extension' is empty; use e.g. '.txt'.")

    references = _references(entry, general, path, section, base, cache_dir, require_media)
    return DatasetEntry(
        **references,
        index=index,
        video_directory=media_dir if has_video else None,
        image_directory=media_dir if has_image else None,
        audio_directory=audio_dir,
        cache_directory=cache_dir,
        caption_extension=caption_extension,
        resolution=(int(resolution[0]), int(resolution[1])),
        # images are one-frame items whatever [general] says for the video datasets
        target_frames=(1,) if has_image else tuple(int(f) for f in target_frames),
        frame_extraction=extraction,
        frame_stride=positive("frame_stride"),
        frame_sample=positive("frame_sample"),
        max_frames=positive("max_frames"),
        batch_size=positive("batch_size"),
        num_repeats=positive("num_repeats"),
        enable_bucket=typed("enable_bucket", bool),
        bucket_no_upscale=typed("bucket_no_upscale", bool),
    )


def _references(entry: dict, general: dict, path: Path, section: str, base: Path, cache_dir: str,
                require_media: bool) -> dict[str, Any]:
    """The reference fields of a `DatasetEntry` (musubi's singular and plural keys)."""
    where = str(path)
    out: dict[str, Any] = {}
    for single, plural in _REFERENCE_KEYS.items():
        table = entry if (single in entry or plural in entry) else general
        origin = section if table is entry else "[general]"
        if single in table and plural in table:
            raise DatasetConfigError(f"{where}: {origin} sets both {single!r} and {plural!r}; keep one.")
        values = [table[single]] if single in table else table.get(plural, [])
        if not isinstance(values, list):
            raise DatasetConfigError(f"{where}: {origin} key {plural!r} must be a list of paths, got {values!r}.")
        media = "cache" not in single
        out[plural] = tuple(
            _directory(v, path, f"{origin} key {single if single in table else plural!r}",
                       must_exist=media and require_media, base=None if media else base)
            for v in values)
    for media, cache in (("reference_directories", "reference_cache_directories"),
                         ("reference_audio_directories", "reference_audio_cache_directories")):
        if not out[media]:
            continue
        if not out[cache] and len(out[media]) == 1:
            out[cache] = (cache_dir,)  # the reference cache is of its own kind there
        if len(out[cache]) != len(out[media]):
            raise DatasetConfigError(f"{where}: {section} has {len(out[media])} {media} but {len(out[cache])} "
                                     f"{cache}; give one cache directory per reference directory.")
        if len(set(out[cache])) != len(out[cache]):
            raise DatasetConfigError(f"{where}: {section} {cache} repeats a directory; give each reference stream "
                                     "its own cache directory.")
    frames = entry.get("reference_frames", general.get("reference_frames"))
    if frames is not None and (not isinstance(frames, int) or isinstance(frames, bool) or frames < 1
                               or (frames - 1) % TEMPORAL_MULTIPLE):
        raise DatasetConfigError(f"{where}: {section} key 'reference_frames' must be 8k+1 (1, 9, 17, ...), got {frames!r}.")
    out["reference_frames"] = frames
    return out


def _base_of(given: str, config_path: Path) -> Path:
    """The folder a relative media path was found under: the working directory, else the config's."""
    return Path.cwd() if (Path.cwd() / Path(given).expanduser()).is_dir() else config_path.parent


def _directory(value: Any, config_path: Path, what: str, must_exist: bool, base: Path | None = None) -> str:
    """Resolve a directory: as given (relative to the working directory, as musubi does), else relative
    to the config file's folder when only that one exists; a missing one is placed under `base`."""
    if not isinstance(value, str) or not value:
        raise DatasetConfigError(f"{config_path}: {what} must be a non-empty path string, got {value!r}.")
    given = Path(value).expanduser()
    candidates = [given] if given.is_absolute() else [Path.cwd() / given, config_path.parent / given]
    for candidate in candidates:
        if candidate.is_dir():
            return str(candidate.resolve())
    if must_exist:
        tried = " or ".join(str(c) for c in candidates)
        raise DatasetConfigError(f"{config_path}: {what} {value!r} is not a directory (looked for {tried}).")
    return str(((base or Path.cwd()) / given).resolve() if not given.is_absolute() else given.resolve())
