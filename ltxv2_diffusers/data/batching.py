"""Batch manager: joins the caches of every dataset per item key and yields training batches.

Sources per `cache_directory`: the Arrow caches written by the cache jobs and, for items they lack,
the musubi per-item safetensors layout. Items are bucketed by latent shape within each dataset,
batched with that dataset's `batch_size`, repeated `num_repeats` times, and ordered by `(seed, epoch)`
only, so a resumed run sees the same batches (`iter_epoch(epoch, start=k)` skips to batch `k`).

Batch dict (docs/architecture.md): `latents [B,128,F,H,W]`, `text [B,L,D]`, `text_mask [B,L]` bool,
`audio_latents [B,8,Fa,16]`, `audio_lengths [B]` int64, `fps [B]`, `keys`; when a batch holds items
from musubi's `ltx2` caches (normalized latents), `latents_normalized` / `audio_latents_normalized` `[B]` bool;
with `references`, the IC-LoRA references `reference_latents [B,128,Fr,Hr,Wr]` / `reference_audio_latents
[B,8,Tr,16]` (several reference streams concatenated along time, as musubi does; `reference_*_normalized` as
above); items without them are left out and said so.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ltxv2_diffusers.modes import LtxMode, resolve_mode

from . import musubi
from .stores import CACHE_COMMANDS as _COMMANDS
from .stores import CacheError, CacheStore
from .validation import ValidationMemo, check_files, check_tensors, squeeze_leading

logger = logging.getLogger("ltxv2_diffusers.data")
_SHOWN = 10  # bad items named one by one; the rest are counted
_WHAT = {"video": "video latents", "audio": "audio latents", "text": "text embeddings"}
DEFAULT_FPS = 24.0  # Arrow rows record their own; musubi caches carry theirs or musubi's 25
logger = logging.getLogger(__name__)
# reference kind -> (cache kind, tensor name, batch key, concatenation dim of one item's tensor, command)
_REFERENCES = {
    "video": ("reference", "latents", "reference_latents", 1, "ltxv2-cache-latents"),
    "audio": ("reference_audio", "audio_latents", "reference_audio_latents", 1, "ltxv2-cache-audio-latents"),
}


@dataclass(frozen=True)
class CacheSource:
    """One dataset's caches: where they are and how the dataset is batched."""

    cache_directory: str
    batch_size: int = 1
    num_repeats: int = 1
    reference_cache_directories: tuple[str, ...] = ()
    reference_audio_cache_directories: tuple[str, ...] = ()


class _KindReader:
    """One kind (`video`, `audio`, `text`) of one cache directory: Arrow rows first, musubi files after."""

    def __init__(self, cache_directory: str, kind: str, entries: dict[str, musubi.MusubiEntry],
                 store_kind: str | None = None):
        self.kind = kind
        self.store = CacheStore(cache_directory, store_kind or kind)  # references: kind `reference[_audio]`
        self.rows = self.store.index()
        self.files = {k: getattr(e, kind) for k, e in entries.items() if getattr(e, kind)}
        self.normalized = {k for k, e in entries.items() if e.normalized}
        self._shapes: dict[str, list] = {}

    def keys(self) -> set[str]:
        return set(self.rows) | set(self.files)

    def __contains__(self, key: str) -> bool:
        return key in self.rows or key in self.files

    def shape(self, key: str, name: str) -> tuple[int, ...]:
        """Shape of a tensor without reading it (Arrow shape column or safetensors header)."""
        if key in self.rows:
            if name not in self._shapes:  # one column read, not every row's tensor bytes
                self._shapes[name] = self.store.load()[f"{name}_shape"]
            return tuple(self._shapes[name][self.rows[key]])
        from safetensors import safe_open

        path = self.files[key]
        with safe_open(path, "pt") as f:
            for k in f.keys():
                if musubi.strip_suffixes(k) in (name, "t5" if name == "text" else name):
                    return tuple(f.get_slice(k).get_shape())
        raise ValueError(f"{path}: no `{name}` tensor")

    def read(self, key: str) -> dict[str, Any]:
        try:
            return self._read(key)
        except ValueError as exc:  # a file damaged after the caches were opened: name the item too
            raise CacheError(f"item {key!r}: {exc}") from None

    def _read(self, key: str) -> dict[str, Any]:
        if key in self.rows:
            return self.store.read(self.rows[key])
        path = self.files[key]
        if self.kind == "video":
            return {"latents": musubi.read_video(path), "fps": musubi.read_fps(path),
                    "normalized": key in self.normalized}
        if self.kind == "audio":
            lat, n = musubi.read_audio(path)
            return {"audio_latents": lat, "audio_lengths": n, "normalized": key in self.normalized}
        text, mask = musubi.read_text(path)
        return {"text": text, "text_mask": mask}


def _image_keys(cache_dir: str) -> set[str]:
    """Keys of the still images among the cached video latents (one frame)."""
    ds = CacheStore(cache_dir, "video").load()
    return set() if ds is None else {k for k, n in zip(ds["key"], ds["num_frames"]) if n == 1}


def _musubi_problem(kind: str, path: str) -> str | None:
    """Why one musubi per-item file of `kind` is unusable (unreadable, truncated, bad tensors), or None."""
    try:
        if kind == "video":
            tensors = {"latents": musubi.read_video(path)}
            musubi.read_fps(path)
        elif kind == "audio":
            latents, n = musubi.read_audio(path)
            tensors = {"audio_latents": latents, "audio_lengths": torch.tensor(n)}
        else:
            text, mask = musubi.read_text(path)
            tensors = {"text": text, "text_mask": mask}
    except ValueError as exc:
        return str(exc).removeprefix(f"{path}: ")
    return check_tensors(kind, tensors)


class BatchManager:
    """Joins caches per item and yields batches in a `(seed, epoch)`-determined order.

    `text_dims=(video_width, audio_width)` (the transformer's caption widths) enables the text layout
    check: the AV layout is `video+audio` wide, the video layout `video` wide (video mode only).
    With `processes > 1` the batches are global batches that the processes split evenly: a bucket's
    last, partial batch is kept only when it still splits evenly, otherwise it is dropped for that
    epoch (`items_dropped_per_epoch()` says how many items that is).
    """

    def __init__(self, sources: list[CacheSource], mode: str | LtxMode = "video", seed: int = 0,
                 text_dims: tuple[int, int] | None = None, dataset_config: str | None = None,
                 processes: int = 1, references: tuple[str, ...] = ()):
        if not sources:
            raise ValueError("no datasets: the dataset config lists no [[datasets]] entries.")
        self.mode = mode if isinstance(mode, LtxMode) else resolve_mode(mode)
        self.sources = list(sources)
        self.seed = int(seed)
        self.processes = max(1, int(processes))
        self.text_dims = tuple(text_dims) if text_dims else None
        self.references = tuple(references)  # which IC-LoRA references to load: "video", "audio"
        self._reference_stores: list[dict[str, list[_KindReader]]] = []
        self._config_hint = f" --dataset_config {dataset_config}" if dataset_config else " --dataset_config <your toml>"
        self._readers: list[dict[str, _KindReader]] = []
        self.left_out: list[str] = []  # keys of items some cache lacks or holds unusable (warned about)
        self._records: list[list[tuple[str, tuple]]] = []  # per source: (key, bucket)
        for src in self.sources:
            self._index_source(src)
        self._check_text_widths()

    @classmethod
    def from_config(cls, config, mode="video", seed: int = 0, text_dims=None, processes: int = 1,
                    references: tuple[str, ...] = ()) -> "BatchManager":
        """From a `DatasetConfig` (data/config.py): one source per `[[datasets]]` entry. A dataset's
        `batch_size` is per process, as in musubi: the global batch is `batch_size x processes`."""
        processes = max(1, int(processes))
        sources = [CacheSource(e.cache_directory, int(e.batch_size) * processes, int(e.num_repeats),
                               tuple(getattr(e, "reference_cache_directories", ())),
                               tuple(getattr(e, "reference_audio_cache_directories", ())))
                   for e in config.datasets]
        return cls(sources, mode, seed=seed, text_dims=text_dims, dataset_config=getattr(config, "path", None),
                   processes=processes, references=references)

    # ------------------------------------------------------------------ indexing and checks

    def _missing(self, kind: str, cache_dir: str, keys: list[str]) -> ValueError:
        shown = ", ".join(repr(k) for k in sorted(keys)[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        return ValueError(
            f"item {shown} in {cache_dir} has no cached {_WHAT[kind]} ({self.mode.value} mode needs them): "
            f"run {_COMMANDS[kind]}{self._config_hint} first."
        )

    def _index_source(self, src: CacheSource) -> None:
        cache_dir = src.cache_directory
        entries = musubi.scan_musubi_cache(cache_dir)
        primary_kind = "video" if self.mode.has_video else "audio"
        needed = ["text"] + (["audio"] if self.mode.has_audio and primary_kind != "audio" else [])
        bad = self._validate(cache_dir, [primary_kind, *needed], entries)
        readers = {k: _KindReader(cache_dir, k, entries) for k in ("video", "audio", "text")}
        primary = readers[primary_kind]
        keys = sorted(primary.keys())
        if not keys:
            raise ValueError(
                f"{cache_dir} holds no cached {_WHAT[primary_kind]} ({self.mode.value} mode needs them): "
                f"run {_COMMANDS[primary_kind]}{self._config_hint} first."
            )
        # One item set: an item some needed cache lacks (its job rejected it, or has not run since it was
        # added) is left out with the others that are bad, and said so; only no item at all is an error.
        for kind in needed:
            missing = [k for k in keys if k not in readers[kind]]
            if len(missing) == len(keys):
                if kind == "audio" and set(missing) <= _image_keys(cache_dir):
                    raise ValueError(f"{cache_dir} holds only images, which have no sound: {self.mode.value} mode "
                                     "trains audio; train them with --ltx_mode video (or beside clips with sound)")
                raise self._missing(kind, cache_dir, missing)
            for key in missing:
                bad.setdefault(key, f"no cached {_WHAT[kind]} (run {_COMMANDS[kind]}{self._config_hint})")
        stores = self._index_references(src)
        for kind in self.references:
            for reader in stores[kind]:  # reference latents are checked like the target's
                memo = ValidationMemo(reader.store.cache_directory)
                try:
                    keys_of: dict[str, list[str]] = {}
                    for key, path in reader.files.items():
                        keys_of.setdefault(path, []).append(key)
                    self._validate_store(reader.store, kind, keys_of, memo, bad)
                finally:
                    memo.save()
        shapes: dict[str, tuple[int, ...]] = {}  # an item's references' shapes, one after the other
        for key in keys:
            found = [self._reference_shape(stores[kind], key) for kind in self.references]
            missing_kinds = [kind for kind, shape in zip(self.references, found) if shape is None]
            if missing_kinds:
                kind = missing_kinds[0]
                bad.setdefault(key, f"no cached {kind} reference (run {_REFERENCES[kind][4]}{self._config_hint} with "
                                    f"reference_{'audio_' if kind == 'audio' else ''}directory in the dataset)")
            else:
                shapes[key] = tuple(x for shape in found for x in shape)
        left_out = [k for k in keys if k in bad]
        if left_out:
            self._report_left_out(cache_dir, left_out, bad, len(keys))
            keys = [k for k in keys if k not in bad]
            if not keys:
                raise ValueError(f"every cached item in {cache_dir} is unusable (listed above); fix or re-create "
                                 "the caches")
        self.left_out.extend(left_out)
        records = []
        for key in keys:
            if primary_kind == "video":
                bucket = primary.shape(key, "latents")[-4:]
            else:
                bucket = primary.shape(key, "audio_latents")[-3:]
            # Items batch together only when their references have the same shape too.
            records.append((key, tuple(bucket) + shapes[key]))
        self._readers.append(readers)
        self._records.append(records)
        self._reference_stores.append(stores)

    def _index_references(self, src: CacheSource) -> dict[str, list[_KindReader]]:
        """Per reference kind, one reader per reference stream: our Arrow caches, and musubi's per-item files
        (named like the item's own cache file) when the reference cache is a folder of its own."""
        dirs = {"video": src.reference_cache_directories, "audio": src.reference_audio_cache_directories}
        out = {}
        for kind in self.references:
            if not dirs[kind]:
                key = "reference_audio_directory" if kind == "audio" else "reference_directory"
                raise ValueError(f"{src.cache_directory}: the dataset has no {key}, but the --ic_lora_strategy trains "
                                 f"with {kind} references{self._config_hint}.")
            out[kind] = [
                _KindReader(d, kind, {} if not os.path.isdir(d) or os.path.samefile(d, src.cache_directory)
                            else musubi.scan_musubi_cache(d), store_kind=_REFERENCES[kind][0])
                for d in dirs[kind]]
        return out

    @staticmethod
    def _reference_shape(readers: list[_KindReader], key: str) -> tuple[int, ...] | None:
        """Shape of an item's references concatenated along time, or None when one is missing."""
        shape = None
        for reader in readers:
            if key not in reader:
                return None
            one = tuple(int(v) for v in reader.shape(key, _REFERENCES[reader.kind][1]))
            shape = one if shape is None else (shape[0], shape[1] + one[1], *shape[2:])
        return shape

    def _validate(self, cache_dir: str, kinds: list[str], entries: dict[str, musubi.MusubiEntry]) -> dict[str, str]:
        """Check every cached item of `kinds` (`data/validation.py`): `{key: why it is unusable}`. A damaged Arrow
        shard is an error naming it and the repair command (its items cannot even be listed)."""
        memo = ValidationMemo(cache_dir)
        bad: dict[str, str] = {}
        try:
            for kind in kinds:
                keys_of: dict[str, list[str]] = {}  # one musubi text cache serves every frame window of its video
                for key, e in entries.items():
                    if getattr(e, kind):
                        keys_of.setdefault(getattr(e, kind), []).append(key)
                self._validate_store(CacheStore(cache_dir, kind), kind, keys_of, memo, bad)
        finally:
            memo.save()
        return bad

    def _validate_store(self, store: CacheStore, kind: str, keys_of: dict[str, list[str]], memo: ValidationMemo,
                        bad: dict[str, str]) -> None:
        """Check one Arrow cache and the musubi files `{path: [keys]}` of the items it lacks, with the tensor
        rules of `kind` (`video`, `audio`, `text`); unusable items go into `bad`."""
        shards = store.shard_files()
        damaged, bad_rows = check_files(shards, store.shard_items, memo)
        if damaged:
            listed = "; ".join(f"{path}: {why}" for path, why in damaged.items())
            raise CacheError(f"damaged {_WHAT[kind]} cache shard(s): {listed}. Run {_COMMANDS[store.kind]}"
                             f"{self._config_hint} --repair to drop them and recompute their items")
        winner = {}
        for shard in shards:  # the newest row of a key is the one training reads
            winner.update((key, shard) for key in store.open_shard(shard)["key"])
        for shard, problems in bad_rows.items():
            for key, problem in problems.items():
                if winner.get(key) == shard:
                    bad.setdefault(key, f"{shard}: {problem}")
        keys_of = {path: [k for k in keys if k not in winner] for path, keys in keys_of.items()}
        keys_of = {path: keys for path, keys in keys_of.items() if keys}

        def read(path: str) -> list[tuple[str, str | None]]:
            problem = _musubi_problem(kind, path)
            return [(key, problem) for key in keys_of[path]]

        _damaged, bad_files = check_files(keys_of, read, memo)
        for path, problems in bad_files.items():
            for key, problem in problems.items():
                bad.setdefault(key, f"{path}: {problem}")

    def _report_left_out(self, cache_dir: str, left_out: list[str], why: dict[str, str], total: int) -> None:
        for key in left_out[:_SHOWN]:
            logger.warning("left out of training: item %r: %s", key, why[key])
        more = f" ({len(left_out) - _SHOWN} more not listed)" if len(left_out) > _SHOWN else ""
        images = set(left_out) & _image_keys(cache_dir)
        images = [k for k in images if "audio latents" in why[k]]
        hint = (f"; {len(images)} of them are images, which have no sound: train them with --ltx_mode video or "
                "in another run" if images else "")
        logger.warning("%d of %d cached item(s) in %s are left out of training%s%s", len(left_out), total, cache_dir,
                       more, hint)

    def _check_text_widths(self) -> None:
        widths: dict[int, str] = {}
        for readers, records in zip(self._readers, self._records):
            for key, _ in records:
                widths.setdefault(readers["text"].shape(key, "text")[-1], key)
        if len(widths) > 1:
            raise ValueError(
                "text embeddings of different widths are mixed ("
                + ", ".join(f"{w} for {k!r}" for w, k in widths.items())
                + "): re-run ltxv2-cache-text-encoder-outputs with one --text_encoder_backend for all datasets."
            )
        if not self.text_dims:
            return
        width = next(iter(widths))
        dv, da = self.text_dims
        av_layout, video_layout = dv + da, dv
        if width == av_layout:
            return
        if width == video_layout:
            if self.mode is LtxMode.VIDEO:
                return
            raise ValueError(
                f"the cached text embeddings have the video-only layout (width {width}), but {self.mode.value} mode "
                f"needs [video_ctx, audio_ctx] (width {av_layout}): re-run ltxv2-cache-text-encoder-outputs "
                "with --ltxv2_audio_video."
            )
        raise ValueError(
            f"the cached text embeddings are {width} wide, which fits neither the video layout ({video_layout}) nor "
            f"the audio+video layout ({av_layout}) of this model: they were made with another text encoder backend "
            "or model (e.g. t5 vs gemma, or LTX-2.0 vs 2.3 connectors); re-run ltxv2-cache-text-encoder-outputs "
            "with the --text_encoder_backend and checkpoint that match this model."
        )

    # ------------------------------------------------------------------ order

    def item_keys(self) -> list[str]:
        """The keys of every item in the batches, sorted."""
        return sorted(key for records in self._records for key, _ in records)

    @property
    def num_items(self) -> int:
        return sum(len(r) for r in self._records)

    def epoch_plan(self, epoch: int) -> list[list[tuple[int, str]]]:
        """The batches of `epoch` as lists of `(source index, item key)`; same seed+epoch, same plan."""
        rng = random.Random(f"ltxv2-batches:{self.seed}:{epoch}")
        batches: list[list[tuple[int, str]]] = []
        for si, (src, records) in enumerate(zip(self.sources, self._records)):
            by_bucket: dict[tuple, list[str]] = {}
            for key, bucket in records:
                by_bucket.setdefault(bucket, []).append(key)
            bs = max(1, int(src.batch_size))
            for bucket in sorted(by_bucket):
                keys = by_bucket[bucket] * max(1, int(src.num_repeats))
                rng.shuffle(keys)
                batches.extend([(si, k) for k in keys[i:i + bs]] for i in range(0, len(keys), bs)
                               if self._splits(min(bs, len(keys) - i)))
        rng.shuffle(batches)
        return batches

    def _splits(self, size: int) -> bool:
        return size % self.processes == 0

    def _bucket_counts(self):
        """`(batch_size, items of one bucket per epoch)` for every bucket of every source."""
        for src, records in zip(self.sources, self._records):
            counts: dict[tuple, int] = {}
            for _, bucket in records:
                counts[bucket] = counts.get(bucket, 0) + 1
            for n in counts.values():
                yield max(1, int(src.batch_size)), n * max(1, int(src.num_repeats))

    def items_dropped_per_epoch(self) -> int:
        """Items left out of each epoch because their partial batch does not split over the processes."""
        return sum(n % bs for bs, n in self._bucket_counts() if not self._splits(n % bs))

    def __len__(self) -> int:
        """Batches per epoch (independent of the epoch)."""
        return sum(n // bs + (1 if n % bs and self._splits(n % bs) else 0) for bs, n in self._bucket_counts())

    def largest_batch(self) -> dict[str, int]:
        """The bucket with the most latent elements per batch (what sizes a run's memory): its `batch` size
        and per-item `video` latent frames x height x width (0 in audio mode) and `audio` latent frames (its
        longest item), read from shapes alone."""
        best: dict[str, int] = {"batch": 1, "video": 0, "audio": 0}
        for src, readers, records in zip(self.sources, self._readers, self._records):
            by_bucket: dict[tuple, list[str]] = {}
            for key, bucket in records:
                by_bucket.setdefault(bucket, []).append(key)
            for bucket, keys in by_bucket.items():
                batch = min(max(1, int(src.batch_size)), len(keys) * max(1, int(src.num_repeats)))
                batch = max(1, batch // self.processes)
                video = int(bucket[1] * bucket[2] * bucket[3]) if self.mode.has_video else 0
                audio = 0
                if self.mode.has_audio:
                    audio = max(int(readers["audio"].shape(k, "audio_latents")[-2]) for k in keys[:8])
                if batch * (video + audio) > best["batch"] * (best["video"] + best["audio"]):
                    best = {"batch": batch, "video": video, "audio": audio}
        return best

    def position(self, step: int) -> tuple[int, int]:
        """`(epoch, batch index)` of the `step`-th batch since the start of training."""
        return divmod(int(step), len(self))

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[dict[str, Any]]:
        """Batches of `epoch` from batch `start` on (resume skips without loading the skipped items)."""
        for refs in self.epoch_plan(epoch)[start:]:
            yield self.collate(refs)

    def iter_from_step(self, step: int = 0) -> Iterator[dict[str, Any]]:
        """Endless batches starting at global `step` (epochs follow one another)."""
        epoch, start = self.position(step)
        while True:
            yield from self.iter_epoch(epoch, start)
            epoch, start = epoch + 1, 0

    # ------------------------------------------------------------------ loading

    def load_item(self, source: int, key: str) -> dict[str, Any]:
        """One item's tensors with suffix-free names."""
        readers = self._readers[source]
        out: dict[str, Any] = {"key": key, "fps": DEFAULT_FPS}
        if self.mode.has_video:
            row = readers["video"].read(key)
            out["latents"] = squeeze_leading(row["latents"], 4)
            out["latents_normalized"] = bool(row.get("normalized", False))
            if row.get("fps"):
                out["fps"] = float(row["fps"])
        if self.mode.has_audio:
            row = readers["audio"].read(key)
            out["audio_latents"] = squeeze_leading(row["audio_latents"], 3)
            out["audio_lengths"] = int(torch.as_tensor(row["audio_lengths"]).reshape(-1)[0])
            out["audio_latents_normalized"] = bool(row.get("normalized", False))
        for kind in self.references:
            _, name, batch_key, dim, _ = _REFERENCES[kind]
            rows = [reader.read(key) for reader in self._reference_stores[source][kind]]
            parts = [squeeze_leading(row[name], 4 if kind == "video" else 3) for row in rows]
            out[batch_key] = torch.cat(parts, dim=dim) if len(parts) > 1 else parts[0]
            normalized = {bool(row.get("normalized", False)) for row in rows}
            if len(normalized) > 1:
                raise ValueError(f"item {key!r}: its reference streams mix normalized (musubi ltx2) and un-normalized "
                                 "caches; cache them with one tool")
            out[f"{batch_key}_normalized"] = normalized.pop()
        row = readers["text"].read(key)
        out["text"] = squeeze_leading(row["text"], 2)
        out["text_mask"] = row["text_mask"].reshape(-1).bool()
        return out

    def collate(self, refs: list[tuple[int, str]]) -> dict[str, Any]:
        items = [self.load_item(si, key) for si, key in refs]
        batch: dict[str, Any] = {"keys": [it["key"] for it in items],
                                 "fps": torch.tensor([it["fps"] for it in items], dtype=torch.float32)}
        if self.mode.has_video:
            dtype = items[0]["latents"].dtype
            batch["latents"] = torch.stack([it["latents"].to(dtype) for it in items])
        if self.mode.has_audio:
            batch["audio_latents"] = _pad_stack([it["audio_latents"] for it in items], dim=1)
            batch["audio_lengths"] = torch.tensor([it["audio_lengths"] for it in items], dtype=torch.int64)
        flags = ("latents_normalized", "audio_latents_normalized", "reference_latents_normalized",
                 "reference_audio_latents_normalized")
        for flag in flags:
            if any(it.get(flag) for it in items):
                batch[flag] = torch.tensor([bool(it.get(flag)) for it in items], dtype=torch.bool)
        for kind in self.references:
            batch_key = _REFERENCES[kind][2]
            batch[batch_key] = torch.stack([it[batch_key].to(items[0][batch_key].dtype) for it in items])
        batch["text"] = _pad_stack([it["text"] for it in items], dim=0)
        batch["text_mask"] = _pad_stack([it["text_mask"] for it in items], dim=0)
        return batch


def _pad_stack(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """Stack, zero-padding `dim` to the longest (padding is masked by `text_mask`/`audio_lengths`)."""
    longest = max(t.shape[dim] for t in tensors)
    dtype = tensors[0].dtype
    out = []
    for t in tensors:
        t = t.to(dtype)
        if t.shape[dim] < longest:
            pad_shape = list(t.shape)
            pad_shape[dim] = longest - t.shape[dim]
            t = torch.cat([t, torch.zeros(pad_shape, dtype=dtype)], dim=dim)
        out.append(t)
    return torch.stack(out)


def cache_directories(config) -> list[str]:
    """The distinct cache directories of a `DatasetConfig`."""
    seen: dict[str, None] = {}
    for e in config.datasets:
        seen.setdefault(os.fspath(e.cache_directory), None)
    return list(seen)
