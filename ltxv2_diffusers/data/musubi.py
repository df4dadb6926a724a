"""The musubi per-item safetensors cache layout (read as is, and written by `ltxv2-export-cache`).

Per item with basename `B` and bucket `W×H` in a `cache_directory`:
`B_{W:04d}x{H:04d}_ltxv2.safetensors` (`latents_{F}x{H}x{W}_{dtype}` `[128,F,H,W]`),
`B_{W:04d}x{H:04d}_ltxv2_audio.safetensors` (`audio_latents_{F}x1x1_{dtype}` `[8,F,16]`,
`audio_lengths_{int dtype}` 0-d or `[1]`), `B_ltxv2_te.safetensors` (`text_{dtype}` `[L,D]`,
`text_mask` `[L]`; legacy `t5_{dtype}`/`t5_mask`). Dtype suffixes come short (`bf16`) or as torch
names (`bfloat16`).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

_DTYPE_SUFFIXES = (
    "bf16|fp16|fp32|fp64|bfloat16|float16|float32|float64|half|float|int8|int16|int32|int64|uint8|bool"
)
_KEY_RE = re.compile(rf"^(?P<base>[A-Za-z0-9_]+?)(?:_\d+(?:x\d+)+)?(?:_(?:{_DTYPE_SUFFIXES}))?$")
_VIDEO_RE = re.compile(r"^(?P<key>.+)_(?P<w>\d{4,})x(?P<h>\d{4,})_ltxv2\.safetensors$")
_AUDIO_RE = re.compile(r"^(?P<key>.+)_(?P<w>\d{4,})x(?P<h>\d{4,})_ltxv2_audio\.safetensors$")
_TEXT_RE = re.compile(r"^(?P<key>.+)_ltxv2_te\.safetensors$")
_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "int32",
          torch.int64: "int64"}

_warned_legacy = False


def strip_suffixes(name: str) -> str:
    """`latents_3x4x6_bf16` -> `latents`, `audio_lengths_int32` -> `audio_lengths`, `text_mask` stays."""
    m = _KEY_RE.match(name)
    return m.group("base") if m else name


def _stripped(tensors: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        base = strip_suffixes(name)
        if base in out:
            raise ValueError(f"{path}: two tensors map to {base!r} ({name!r} and another); the file is ambiguous.")
        out[base] = t
    return out


@dataclass
class MusubiEntry:
    """The files of one item in a musubi cache directory."""

    key: str
    video: str | None = None
    audio: str | None = None
    text: str | None = None
    bucket: tuple[int, int] | None = None
    extra: dict = field(default_factory=dict)


def scan_musubi_cache(cache_directory: str) -> dict[str, MusubiEntry]:
    """All items in `cache_directory` by key (the media basename with its frame-window suffix)."""
    entries: dict[str, MusubiEntry] = {}
    if not os.path.isdir(cache_directory):
        return entries
    for f in sorted(os.listdir(cache_directory)):
        path = os.path.join(cache_directory, f)
        for regex, slot in ((_AUDIO_RE, "audio"), (_VIDEO_RE, "video"), (_TEXT_RE, "text")):
            m = regex.match(f)
            if m:
                e = entries.setdefault(m.group("key"), MusubiEntry(m.group("key")))
                setattr(e, slot, path)
                if slot != "text":
                    e.bucket = (int(m.group("w")), int(m.group("h")))
                break
    return entries


def _load(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # truncated or corrupt: safetensors' message names no file
        raise ValueError(f"{path}: unreadable safetensors file ({exc}); re-create it with its cache job") from None


def read_video(path: str) -> torch.Tensor:
    """Video latents `[128,F,H,W]` from a `_ltxv2.safetensors` file."""
    t = _stripped(_load(path), path)
    if "latents" not in t:
        raise ValueError(f"{path}: no `latents_*` tensor (found {sorted(t)}); not an LTX-2 video latent cache.")
    return t["latents"]


def read_audio(path: str) -> tuple[torch.Tensor, int]:
    """`(audio_latents [8,F,16], audio_lengths)` from a `_ltxv2_audio.safetensors` file."""
    t = _stripped(_load(path), path)
    if "audio_latents" not in t:
        raise ValueError(f"{path}: no `audio_latents_*` tensor (found {sorted(t)}); not an LTX-2 audio cache.")
    lat = t["audio_latents"]
    lengths = t.get("audio_lengths")
    n = int(lengths.reshape(-1)[0]) if lengths is not None else int(lat.shape[-2])
    return lat, n


def read_text(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(text [L,D], text_mask [L] bool)`; legacy `t5`/`t5_mask` keys load with one warning."""
    global _warned_legacy
    t = _stripped(_load(path), path)
    if "text" in t:
        text, mask = t["text"], t.get("text_mask")
    elif "t5" in t:
        if not _warned_legacy:
            logger.warning(
                "%s uses the legacy `t5`/`t5_mask` keys; reading them as `text`/`text_mask` "
                "(re-export with ltxv2-export-cache to silence this).", path)
            _warned_legacy = True
        text, mask = t["t5"], t.get("t5_mask")
    else:
        raise ValueError(f"{path}: no `text_*` or legacy `t5_*` tensor (found {sorted(t)}).")
    if mask is None:
        mask = torch.ones(text.shape[0], dtype=torch.bool)
    return text, mask.reshape(-1).bool()


def video_file(cache_directory: str, key: str, bucket: tuple[int, int]) -> str:
    return os.path.join(cache_directory, f"{key}_{bucket[0]:04d}x{bucket[1]:04d}_ltxv2.safetensors")


def audio_file(cache_directory: str, key: str, bucket: tuple[int, int]) -> str:
    return os.path.join(cache_directory, f"{key}_{bucket[0]:04d}x{bucket[1]:04d}_ltxv2_audio.safetensors")


def text_file(cache_directory: str, key: str) -> str:
    return os.path.join(cache_directory, f"{key}_ltxv2_te.safetensors")


def _suffix(t: torch.Tensor) -> str:
    return _SHORT.get(t.dtype, str(t.dtype).removeprefix("torch."))


def _save(tensors: dict[str, torch.Tensor], path: str) -> str:
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def write_video(cache_directory: str, key: str, bucket: tuple[int, int], latents: torch.Tensor) -> str:
    f, h, w = latents.shape[-3:]
    return _save({f"latents_{f}x{h}x{w}_{_suffix(latents)}": latents}, video_file(cache_directory, key, bucket))


def write_audio(cache_directory: str, key: str, bucket: tuple[int, int], audio_latents: torch.Tensor,
                audio_lengths: int) -> str:
    f = audio_latents.shape[-2]
    return _save(
        {f"audio_latents_{f}x1x1_{_suffix(audio_latents)}": audio_latents,
         "audio_lengths_int32": torch.tensor(int(audio_lengths), dtype=torch.int32)},
        audio_file(cache_directory, key, bucket),
    )


def write_text(cache_directory: str, key: str, text: torch.Tensor, text_mask: torch.Tensor) -> str:
    return _save({f"text_{_suffix(text)}": text, "text_mask": text_mask.to(torch.int32)},
                 text_file(cache_directory, key))


# ------------------------------------------------------------------------------------------------
# conversion between this layout and the Arrow caches (ltxv2-export-cache)


def export_arrow_to_musubi(cache_directory: str, output_directory: str | None = None) -> dict[str, int]:
    """Write every Arrow cache row of `cache_directory` as musubi per-item files; returns counts per kind."""
    from .stores import CacheStore

    out = output_directory or cache_directory
    os.makedirs(out, exist_ok=True)
    counts = {"video": 0, "audio": 0, "text": 0}
    buckets: dict[str, tuple[int, int]] = {}
    video = CacheStore(cache_directory, "video")
    for key, i in video.index().items():
        row = video.read(i)
        bucket = (int(row["width"]), int(row["height"]))
        buckets[key] = bucket
        write_video(out, key, bucket, row["latents"])
        counts["video"] += 1
    audio = CacheStore(cache_directory, "audio")
    for key, i in audio.index().items():
        row = audio.read(i)
        bucket = (int(row["width"] or 0), int(row["height"] or 0)) if row.get("width") else buckets.get(key)
        if not bucket:
            raise ValueError(f"{audio.path}: audio row {key!r} has no bucket size and no video row to take it from.")
        write_audio(out, key, bucket, row["audio_latents"], int(row["audio_lengths"]))
        counts["audio"] += 1
    text = CacheStore(cache_directory, "text")
    for key, i in text.index().items():
        row = text.read(i)
        write_text(out, key, row["text"], row["text_mask"])
        counts["text"] += 1
    return counts


def import_musubi_to_arrow(cache_directory: str, output_directory: str | None = None,
                           shard_rows: int = 256) -> dict[str, int]:
    """Read the musubi per-item files of `cache_directory` into Arrow caches; returns counts per kind.

    Imported rows get an `imported:` fingerprint, so a later cache job recomputes them rather than
    trusting settings it cannot know. The frame rate is not in the musubi layout; 24 is recorded.
    """
    from .encoders import file_stamp
    from .stores import rows_to_stores, tensor_to_columns

    out = output_directory or cache_directory
    entries = scan_musubi_cache(cache_directory)

    def video_rows():
        for key, e in entries.items():
            if e.video:
                lat = read_video(e.video)
                yield {"key": key, "fingerprint": f"imported:{file_stamp(e.video)}",
                       **tensor_to_columns("latents", lat), "fps": 24.0, "width": e.bucket[0],
                       "height": e.bucket[1], "num_frames": (lat.shape[-3] - 1) * 8 + 1, "source": e.video}

    def audio_rows():
        for key, e in entries.items():
            if e.audio:
                lat, n = read_audio(e.audio)
                yield {"key": key, "fingerprint": f"imported:{file_stamp(e.audio)}",
                       **tensor_to_columns("audio_latents", lat), "audio_lengths": n, "sample_rate": 16000,
                       "width": e.bucket[0], "height": e.bucket[1], "source": e.audio}

    def text_rows():
        for key, e in entries.items():
            if e.text:
                text, mask = read_text(e.text)
                yield {"key": key, "fingerprint": f"imported:{file_stamp(e.text)}",
                       **tensor_to_columns("text", text), **tensor_to_columns("text_mask", mask), "caption": None}

    return {
        "video": rows_to_stores(out, "video", video_rows(), shard_rows),
        "audio": rows_to_stores(out, "audio", audio_rows(), shard_rows),
        "text": rows_to_stores(out, "text", text_rows(), shard_rows),
    }
