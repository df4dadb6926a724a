"""musubi-tuner's per-item safetensors cache layout: read as is, and written by `ltxv2-export-cache`.

Two generations share one shape and differ in name and content:
- `ltx2` (musubi's `ltx-2` branch today; its caching scripts write it): in a `cache_directory`, per item
  with key `K` (media stem, plus `_{start:05d}-{frames:03d}` for a video frame window) and bucket `W×H`:
  `K_{W:04d}x{H:04d}_ltx2.safetensors` (`latents_{F}x{H}x{W}_{dtype}` `[128,F,H,W]`),
  `K_{W:04d}x{H:04d}_ltx2_audio.safetensors` (`audio_latents_{T}x{M}x{C}_{dtype}` `[8,T,16]`,
  `audio_lengths_{int dtype}`), and ONE text cache per media file, `{stem}_ltx2_te.safetensors`
  (`text_{dtype}` `[L,D]`, `text_mask` `[L]`, plus `video_prompt_embeds_*` / `audio_prompt_embeds_*` /
  `prompt_attention_mask`), shared by all of that file's frame windows. Latents are stored the way the
  official VAE encoders return them: normalized with the VAE's per-channel statistics. Video caches
  carry the frame rate in their metadata (`target_fps`, default 25).
- `ltxv2` (the seed draft): the same names with `ltxv2`, text keyed per item (`K_ltxv2_te`), latents
  un-normalized, no frame rate (25, musubi's default, is assumed).
Audio sidecars come as `K_{W:04d}x{H:04d}_<arch>_audio` (beside the video cache) or `K_<arch>_audio`
(written when the video cache has another name); dtype suffixes short (`bf16`) or as torch names
(`bfloat16`); `audio_lengths` 0-d or `[1]`; legacy text keys `t5_*`/`t5_mask` load with one warning.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

import torch

from .encoders import file_stamp
from .stores import CacheStore, rows_to_stores, tensor_to_columns

logger = logging.getLogger(__name__)

NAMINGS = ("ltx2", "ltxv2")  # musubi's architecture name today, and the seed draft's
DEFAULT_NAMING = "ltx2"
NORMALIZED_NAMINGS = frozenset({"ltx2"})  # caches holding the encoders' normalized output
MUSUBI_FPS = 25.0  # musubi's LTX-2 target frame rate, which its trainer assumes for caches without one
_ARCH_METADATA = {"ltx2": "ltx2_v1", "ltxv2": "ltxv2_v1"}

_DTYPE_SUFFIXES = (
    "bf16|fp16|fp32|fp64|bfloat16|float16|float32|float64|half|float|int8|int16|int32|int64|uint8|bool"
)
_KEY_RE = re.compile(rf"^(?P<base>[A-Za-z0-9_]+?)(?:_\d+(?:x\d+)+)?(?:_(?:{_DTYPE_SUFFIXES}))?$")
_ARCH = "(?P<arch>ltx2|ltxv2)"
_VIDEO_RE = re.compile(rf"^(?P<key>.+)_(?P<w>\d{{4,}})x(?P<h>\d{{4,}})_{_ARCH}\.safetensors$")
_AUDIO_RE = re.compile(rf"^(?P<key>.+?)(?:_(?P<w>\d{{4,}})x(?P<h>\d{{4,}}))?_{_ARCH}_audio\.safetensors$")
_TEXT_RE = re.compile(rf"^(?P<key>.+)_{_ARCH}_te\.safetensors$")
# musubi's video dataset reads the token before the bucket as `start-count` (optionally `-section`)
# and looks the text up under the key without it.
_WINDOW_RE = re.compile(r"_\d+-\d+(?:-\d+)?$")
_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32", torch.int32: "int32",
          torch.int64: "int64"}

_warned_legacy = False


def strip_suffixes(name: str) -> str:
    """`latents_3x4x6_bf16` -> `latents`, `audio_lengths_int32` -> `audio_lengths`, `text_mask` stays."""
    m = _KEY_RE.match(name)
    return m.group("base") if m else name


def media_stem(key: str) -> str:
    """The media file's stem of an item key (`clip_00000-009` -> `clip`): musubi's text-cache key."""
    return _WINDOW_RE.sub("", key)


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
    naming: str = DEFAULT_NAMING
    extra: dict = field(default_factory=dict)

    @property
    def normalized(self) -> bool:
        """Whether the latents are the VAE encoders' normalized output (`ltx2`) or raw means (`ltxv2`)."""
        return self.naming in NORMALIZED_NAMINGS


def scan_musubi_cache(cache_directory: str) -> dict[str, MusubiEntry]:
    """All items in `cache_directory` by key (media stem plus frame window), found by musubi's rules.

    An item's text cache is the one under its own key or, as musubi's loader looks it up, under its
    media stem (one text cache per video, shared by its frame windows). Both namings may share a
    folder; one item cached under both is an error, since which one to train on is unclear.
    """
    entries: dict[str, MusubiEntry] = {}
    texts: dict[tuple[str, str], str] = {}
    if not os.path.isdir(cache_directory):
        return entries
    for f in sorted(os.listdir(cache_directory)):
        path = os.path.join(cache_directory, f)
        m = _TEXT_RE.match(f)
        if m:
            texts[(m.group("arch"), m.group("key"))] = path
            continue
        for regex, slot in ((_AUDIO_RE, "audio"), (_VIDEO_RE, "video")):
            m = regex.match(f)
            if not m:
                continue
            key, arch = m.group("key"), m.group("arch")
            e = entries.setdefault(key, MusubiEntry(key, naming=arch))
            if e.naming != arch:
                raise ValueError(f"{cache_directory}: item {key!r} is cached under both the `_{e.naming}` and "
                                 f"`_{arch}` names; remove one set of files.")
            if getattr(e, slot) is not None:
                first = os.path.basename(getattr(e, slot))
                raise ValueError(f"{cache_directory}: item {key!r} has two {slot} caches ({first} and {f}); remove one.")
            setattr(e, slot, path)
            if m.group("w"):
                e.bucket = (int(m.group("w")), int(m.group("h")))
            break
    for key, e in entries.items():
        e.text = texts.get((e.naming, key)) or texts.get((e.naming, media_stem(key)))
    for (arch, key), path in texts.items():  # text-only keys: readable, never a training item on their own
        entries.setdefault(key, MusubiEntry(key, text=path, naming=arch))
    return entries


def _load(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except Exception as exc:  # truncated or corrupt: safetensors' message names no file
        raise ValueError(f"{path}: unreadable safetensors file ({exc}); re-create it with its cache job") from None


def read_video(path: str) -> torch.Tensor:
    """Video latents `[128,F,H,W]` from a `_ltx2` / `_ltxv2` video cache, as stored."""
    t = _stripped(_load(path), path)
    if "latents" not in t:
        raise ValueError(f"{path}: no `latents_*` tensor (found {sorted(t)}); not an LTX-2 video latent cache.")
    return t["latents"]


def read_fps(path: str) -> float:
    """The frame rate a video cache was made at (`target_fps` metadata), else musubi's default 25."""
    from safetensors import safe_open

    try:
        with safe_open(path, "pt") as f:
            value = (f.metadata() or {}).get("target_fps")
    except Exception as exc:  # truncated or corrupt: safetensors' message names no file
        raise ValueError(f"{path}: unreadable safetensors file ({exc}); re-create it with its cache job") from None
    try:
        fps = float(value) if value is not None else MUSUBI_FPS
    except ValueError:
        raise ValueError(f"{path}: metadata target_fps={value!r} is not a number; re-cache the item.") from None
    if not fps > 0:
        raise ValueError(f"{path}: metadata target_fps={value!r} must be > 0; re-cache the item.")
    return fps


def read_audio(path: str) -> tuple[torch.Tensor, int]:
    """`(audio_latents [8,T,16], audio_lengths)` from an audio sidecar, as stored."""
    t = _stripped(_load(path), path)
    if "audio_latents" not in t:
        raise ValueError(f"{path}: no `audio_latents_*` tensor (found {sorted(t)}); not an LTX-2 audio cache.")
    lat = t["audio_latents"]
    lengths = t.get("audio_lengths")
    n = int(lengths.reshape(-1)[0]) if lengths is not None else int(lat.shape[-2])
    return lat, n


def read_text(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """`(text [L,D], text_mask [L] bool)` (musubi's `text` is its video and audio prompt embeds joined);
    legacy `t5`/`t5_mask` keys load with one warning."""
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


# ------------------------------------------------------------------------------------------------
# normalization (the `ltx2` caches hold what the official encoders return)


def video_context_width(path: str) -> int | None:
    """The video text-context width of the LTX-2 checkpoint at `path`, from its config alone (None if unknown)."""
    from ltxv2_diffusers.models.adapter import context_widths
    from ltxv2_diffusers.models.loading import read_transformer_config

    try:
        config = read_transformer_config(path)
    except (OSError, ValueError):
        return None
    return context_widths(config)[0] if config else None


@dataclass(frozen=True)
class LatentStats:
    """The VAEs' per-channel statistics: video `[C]` (with `scaling_factor`), audio per packed feature `[C*M]`."""

    video_mean: torch.Tensor
    video_std: torch.Tensor
    audio_mean: torch.Tensor
    audio_std: torch.Tensor
    scaling_factor: float = 1.0
    audio_mel_bins: int = 16

    def normalize_video(self, latents: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (latents.dim() - 1)
        x = latents.float()
        return ((x - self.video_mean.view(shape)) * self.scaling_factor / self.video_std.view(shape)).to(latents.dtype)

    def denormalize_video(self, latents: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (latents.dim() - 1)
        x = latents.float()
        return (x * self.video_std.view(shape) / self.scaling_factor + self.video_mean.view(shape)).to(latents.dtype)

    def _audio(self, latents: torch.Tensor, fn) -> torch.Tensor:
        c, t, m = latents.shape  # [C, T, M]; the statistics are per packed (channel, mel bin) feature
        tokens = latents.float().permute(1, 0, 2).reshape(t, c * m)
        return fn(tokens).reshape(t, c, m).permute(1, 0, 2).to(latents.dtype)

    def normalize_audio(self, latents: torch.Tensor) -> torch.Tensor:
        return self._audio(latents, lambda x: (x - self.audio_mean) / self.audio_std)

    def denormalize_audio(self, latents: torch.Tensor) -> torch.Tensor:
        return self._audio(latents, lambda x: x * self.audio_std + self.audio_mean)


def latent_stats_from_vae(path: str) -> LatentStats:
    """The statistics of the VAEs in `path` (an official checkpoint or diffusers folder; `--vae`)."""
    from ltxv2_diffusers.models.adapter import vae_statistics
    from ltxv2_diffusers.models.loading import load_components

    parts = load_components(path, components=("vae", "audio_vae"))
    missing = [name for name in ("vae", "audio_vae") if name not in parts]
    if missing:
        raise ValueError(f"--vae {path} has no {', '.join(missing)}; pass the LTX-2 checkpoint the caches were "
                         "made with.")
    s = vae_statistics(parts["vae"], parts["audio_vae"])
    return LatentStats(torch.tensor(s["latents_mean"]), torch.tensor(s["latents_std"]),
                       torch.tensor(s["audio_latents_mean"]), torch.tensor(s["audio_latents_std"]),
                       float(s["scaling_factor"]), int(s["audio_latent_mel_bins"]))


# ------------------------------------------------------------------------------------------------
# writing


def video_file(cache_directory: str, key: str, bucket: tuple[int, int], naming: str = DEFAULT_NAMING) -> str:
    return os.path.join(cache_directory, f"{key}_{bucket[0]:04d}x{bucket[1]:04d}_{naming}.safetensors")


def audio_file(cache_directory: str, key: str, bucket: tuple[int, int], naming: str = DEFAULT_NAMING) -> str:
    return os.path.join(cache_directory, f"{key}_{bucket[0]:04d}x{bucket[1]:04d}_{naming}_audio.safetensors")


def text_file(cache_directory: str, key: str, naming: str = DEFAULT_NAMING) -> str:
    """Per media file (`ltx2`: the key's media stem) or per item (`ltxv2`)."""
    return os.path.join(cache_directory, f"{media_stem(key) if naming == 'ltx2' else key}_{naming}_te.safetensors")


def _suffix(t: torch.Tensor, naming: str) -> str:
    # musubi names dtypes by torch's name today (`bfloat16`); the seed draft wrote the short names.
    if naming == "ltx2":
        return str(t.dtype).removeprefix("torch.")
    return _SHORT.get(t.dtype, str(t.dtype).removeprefix("torch."))


def _save(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> str:
    from safetensors.torch import save_file

    tmp = path + ".tmp"
    save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt", **metadata})
    os.replace(tmp, path)
    return path


def _metadata(naming: str, **extra) -> dict[str, str]:
    return {"architecture": _ARCH_METADATA[naming], "format_version": "1.0.1",
            **{k: str(v) for k, v in extra.items() if v is not None}}


def write_video(cache_directory: str, key: str, bucket: tuple[int, int], latents: torch.Tensor,
                naming: str = DEFAULT_NAMING, fps: float | None = None, num_frames: int | None = None) -> str:
    """One video cache; `latents` as the naming stores them (normalized for `ltx2`)."""
    f, h, w = latents.shape[-3:]
    meta = _metadata(naming, width=bucket[0], height=bucket[1], frame_count=num_frames,
                     target_fps=float(fps) if fps else None,
                     duration_seconds=(num_frames / float(fps)) if fps and num_frames else None)
    return _save({f"latents_{f}x{h}x{w}_{_suffix(latents, naming)}": latents},
                 video_file(cache_directory, key, bucket, naming), meta)


def write_audio(cache_directory: str, key: str, bucket: tuple[int, int], audio_latents: torch.Tensor,
                audio_lengths: int, naming: str = DEFAULT_NAMING) -> str:
    """One audio sidecar beside the item's video cache."""
    c, t, m = audio_latents.shape[-3:]
    name = f"audio_latents_{t}x{m}x{c}" if naming == "ltx2" else f"audio_latents_{t}x1x1"
    return _save({f"{name}_{_suffix(audio_latents, naming)}": audio_latents,
                  "audio_lengths_int32": torch.tensor(int(audio_lengths), dtype=torch.int32)},
                 audio_file(cache_directory, key, bucket, naming), _metadata(naming))


def write_text(cache_directory: str, key: str, text: torch.Tensor, text_mask: torch.Tensor,
               naming: str = DEFAULT_NAMING, caption: str | None = None, video_width: int | None = None) -> str:
    """One text cache (per media file for `ltx2`, per item for `ltxv2`). With `video_width` (the model's video
    context width) an `ltx2` cache also holds musubi's split `video_/audio_prompt_embeds` and
    `prompt_attention_mask`, as its Gemma cache writer stores them beside `text`."""
    d = _suffix(text, naming)
    mask = text_mask.to(torch.int32)
    tensors = {f"text_{d}": text, "text_mask": mask}
    if naming == "ltx2" and video_width and 0 < video_width <= text.shape[-1]:
        tensors[f"video_prompt_embeds_{d}"] = text[..., :video_width].clone()
        if video_width < text.shape[-1]:
            tensors[f"audio_prompt_embeds_{d}"] = text[..., video_width:].clone()
        tensors["prompt_attention_mask"] = mask.clone()
    return _save(tensors, text_file(cache_directory, key, naming), _metadata(naming, caption1=caption))


# ------------------------------------------------------------------------------------------------
# conversion between this layout and the Arrow caches (ltxv2-export-cache)


def _need_stats(naming: str, stats: LatentStats | None, what: str) -> None:
    if naming in NORMALIZED_NAMINGS and stats is None:
        raise ValueError(f"{what}: musubi's `{naming}` caches hold normalized latents; pass --vae (the LTX-2 "
                         "checkpoint the caches were made with) so they can be converted.")


def export_arrow_to_musubi(cache_directory: str, output_directory: str | None = None,
                           naming: str = DEFAULT_NAMING, stats: LatentStats | None = None,
                           video_width: int | None = None) -> dict[str, int]:
    """Write every Arrow cache row of `cache_directory` as musubi per-item files; returns counts per kind.

    `ltx2` (musubi today) stores the latents normalized with `stats` and one text cache per media file,
    which must then be the same for all of that file's frame windows (`video_width`: see `write_text`);
    `ltxv2` is the seed draft's layout.
    """
    if naming not in NAMINGS:
        raise ValueError(f"--musubi_naming {naming!r}: choose one of {', '.join(NAMINGS)}")
    out = output_directory or cache_directory
    counts = {"video": 0, "audio": 0, "text": 0}
    video, audio, text = (CacheStore(cache_directory, k) for k in ("video", "audio", "text"))
    if any(s.exists() for s in (video, audio)):
        _need_stats(naming, stats, f"--musubi_naming {naming}")
    os.makedirs(out, exist_ok=True)
    buckets: dict[str, tuple[int, int]] = {}
    for key, i in video.index().items():
        row = video.read(i)
        bucket = (int(row["width"]), int(row["height"]))
        buckets[key] = bucket
        lat = stats.normalize_video(row["latents"]) if naming in NORMALIZED_NAMINGS else row["latents"]
        write_video(out, key, bucket, lat, naming, fps=row.get("fps"), num_frames=row.get("num_frames"))
        counts["video"] += 1
    for key, i in audio.index().items():
        row = audio.read(i)
        bucket = (int(row["width"] or 0), int(row["height"] or 0)) if row.get("width") else buckets.get(key)
        if not bucket:
            raise ValueError(f"{audio.path}: audio row {key!r} has no bucket size and no video row to take it from.")
        lat = stats.normalize_audio(row["audio_latents"]) if naming in NORMALIZED_NAMINGS else row["audio_latents"]
        write_audio(out, key, bucket, lat, int(row["audio_lengths"]), naming)
        counts["audio"] += 1
    written: dict[str, tuple[str, torch.Tensor, torch.Tensor]] = {}
    for key, i in text.index().items():
        row = text.read(i)
        path = text_file(out, key, naming)
        if path in written:  # another frame window of the same media file
            first, t0, m0 = written[path]
            if not (torch.equal(t0, row["text"]) and torch.equal(m0.bool(), row["text_mask"].bool())):
                raise ValueError(
                    f"{text.path}: items {first!r} and {key!r} come from one media file but have different text "
                    f"embeddings; musubi's `{naming}` layout keeps one per file. Re-run "
                    "ltxv2-cache-text-encoder-outputs, or export with --musubi_naming ltxv2.")
            continue
        write_text(out, key, row["text"], row["text_mask"], naming, caption=row.get("caption"), video_width=video_width)
        written[path] = (key, row["text"], row["text_mask"])
        counts["text"] += 1
    return counts


def import_musubi_to_arrow(cache_directory: str, output_directory: str | None = None,
                           shard_rows: int = 256, stats: LatentStats | None = None) -> dict[str, int]:
    """Read the musubi per-item files of `cache_directory` into Arrow caches; returns counts per kind.

    Imported rows get an `imported:` fingerprint, so a later cache job recomputes them rather than
    trusting settings it cannot know. Normalized (`ltx2`) latents are stored raw, as the Arrow caches
    keep them, which needs `stats`. Each item gets its text (also a per-video text cache) as its own row.
    """
    out = output_directory or cache_directory
    entries = scan_musubi_cache(cache_directory)
    if any(e.normalized and (e.video or e.audio) for e in entries.values()):
        _need_stats("ltx2", stats, f"{cache_directory}")
    items = {k: e for k, e in entries.items() if e.video or e.audio}

    def video_rows():
        for key, e in entries.items():
            if e.video:
                lat = read_video(e.video)
                lat = stats.denormalize_video(lat) if e.normalized else lat
                yield {"key": key, "fingerprint": f"imported:{file_stamp(e.video)}",
                       **tensor_to_columns("latents", lat), "fps": read_fps(e.video), "width": e.bucket[0],
                       "height": e.bucket[1], "num_frames": (lat.shape[-3] - 1) * 8 + 1, "source": e.video}

    def audio_rows():
        for key, e in entries.items():
            if e.audio:
                lat, n = read_audio(e.audio)
                lat = stats.denormalize_audio(lat) if e.normalized else lat
                bucket = e.bucket or (0, 0)
                yield {"key": key, "fingerprint": f"imported:{file_stamp(e.audio)}",
                       **tensor_to_columns("audio_latents", lat), "audio_lengths": n, "sample_rate": 16000,
                       "width": bucket[0], "height": bucket[1], "source": e.audio}

    def text_rows():
        for key, e in (items or entries).items():
            if e.text:
                text, mask = read_text(e.text)
                yield {"key": key, "fingerprint": f"imported:{file_stamp(e.text)}",
                       **tensor_to_columns("text", text), **tensor_to_columns("text_mask", mask), "caption": None}

    return {
        "video": rows_to_stores(out, "video", video_rows(), shard_rows),
        "audio": rows_to_stores(out, "audio", audio_rows(), shard_rows),
        "text": rows_to_stores(out, "text", text_rows(), shard_rows),
    }
