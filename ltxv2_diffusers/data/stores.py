"""Arrow caches: one `datasets` dataset per cache kind in a dataset's `cache_directory`.

Each cache is a folder of Arrow shard files written atomically as a job goes (a killed job keeps every
finished shard). Tensors are stored exactly (bf16 included) as raw bytes + shape + dtype columns, so
rows round-trip bit for bit and `push_to_hub` works on plain Arrow types. Rows are keyed by item key;
when a key appears in several shards the newest shard wins.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from typing import Any, Iterable

import torch

CACHE_KINDS = ("video", "audio", "text", "sample_prompts", "reference", "reference_audio")
_FOLDERS = {
    "video": "ltxv2_video_latents",
    "reference": "ltxv2_reference_latents",  # IC-LoRA video references (data/references.py)
    "reference_audio": "ltxv2_reference_audio_latents",
    "audio": "ltxv2_audio_latents",
    "text": "ltxv2_text",
    "sample_prompts": "ltxv2_sample_prompts",
}
# Which tensor columns each kind holds (each as `<name>`, `<name>_shape`, `<name>_dtype`).
TENSOR_COLUMNS = {
    "video": ("latents",),
    "reference": ("latents",),
    "reference_audio": ("audio_latents",),
    "audio": ("audio_latents",),
    "text": ("text", "text_mask"),
    "sample_prompts": ("text", "text_mask"),
}
SCALAR_COLUMNS = {
    "video": {"fps": "float32", "width": "int32", "height": "int32", "num_frames": "int32", "source": "string"},
    "reference": {"fps": "float32", "width": "int32", "height": "int32", "num_frames": "int32", "source": "string"},
    "reference_audio": {"audio_lengths": "int64", "sample_rate": "int32", "width": "int32", "height": "int32",
                        "source": "string"},
    "audio": {"audio_lengths": "int64", "sample_rate": "int32", "width": "int32", "height": "int32",
              "source": "string"},
    "text": {"caption": "string"},
    "sample_prompts": {"prompt": "string"},
}

# The command that writes each kind (what an error tells the user to run).
CACHE_COMMANDS = {
    "video": "ltxv2-cache-latents",
    "audio": "ltxv2-cache-audio-latents",
    "text": "ltxv2-cache-text-encoder-outputs",
    "sample_prompts": "ltxv2-cache-text-encoder-outputs --sample_prompts",
    "reference": "ltxv2-cache-latents",
    "reference_audio": "ltxv2-cache-audio-latents",
}


class CacheError(ValueError):
    """A cache file that cannot be read; the message names it and the command that repairs it."""


_TORCH_DTYPES = {
    "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_to_columns(name: str, tensor: torch.Tensor) -> dict[str, Any]:
    """`{name: bytes, name_shape: [...], name_dtype: 'bfloat16'}` for one row (exact, any dtype)."""
    t = tensor.detach().cpu().contiguous()
    raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
    return {name: raw.numpy().tobytes(), f"{name}_shape": list(t.shape), f"{name}_dtype": dtype_name(t.dtype)}


def columns_to_tensor(row: dict[str, Any], name: str) -> torch.Tensor:
    """Inverse of `tensor_to_columns` (`ValueError` when dtype, shape and bytes disagree)."""
    if row.get(f"{name}_dtype") not in _TORCH_DTYPES:
        raise ValueError(f"`{name}` has unknown dtype {row.get(f'{name}_dtype')!r}")
    dtype = _TORCH_DTYPES[row[f"{name}_dtype"]]
    shape = tuple(int(s) for s in row[f"{name}_shape"])
    buf = bytearray(row[name] or b"")
    expected = dtype.itemsize * int(torch.Size(shape).numel())
    if len(buf) != expected:
        raise ValueError(f"`{name}` holds {len(buf)} bytes, {expected} expected for {dtype_name(dtype)} {list(shape)}")
    if dtype == torch.bfloat16:
        return torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16).reshape(shape) if buf else torch.empty(shape, dtype=dtype)
    if not buf:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype).reshape(shape)


def features_for(kind: str):
    """The `datasets.Features` every shard of `kind` uses (shards must concatenate)."""
    from datasets import Features, List, Value

    feats: dict[str, Any] = {"key": Value("string"), "fingerprint": Value("string")}
    for name in TENSOR_COLUMNS[kind]:
        feats[name] = Value("binary")
        feats[f"{name}_shape"] = List(Value("int64"))
        feats[f"{name}_dtype"] = Value("string")
    for name, dtype in SCALAR_COLUMNS[kind].items():
        feats[name] = Value(dtype)
    return Features(feats)


class CacheStore:
    """The Arrow cache of one kind (`video`, `audio`, `text`, `sample_prompts`) in `cache_directory`."""

    def __init__(self, cache_directory: str | os.PathLike, kind: str):
        if kind not in CACHE_KINDS:
            raise ValueError(f"unknown cache kind {kind!r}; one of {', '.join(CACHE_KINDS)}")
        self.cache_directory = os.fspath(cache_directory)
        self.kind = kind
        self.path = os.path.join(self.cache_directory, _FOLDERS[kind])
        self._loaded: tuple[tuple[str, ...], Any] | None = None

    def __repr__(self) -> str:
        return f"CacheStore({self.path!r})"

    def shard_files(self) -> list[str]:
        """Finished shards, oldest first (names sort by creation time)."""
        if not os.path.isdir(self.path):
            return []
        return sorted(os.path.join(self.path, f) for f in os.listdir(self.path) if f.endswith(".arrow"))

    def exists(self) -> bool:
        return bool(self.shard_files())

    def _damaged(self, shard: str, exc: BaseException) -> CacheError:
        return CacheError(f"{shard}: damaged cache shard ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          f"run {CACHE_COMMANDS[self.kind]} --repair to drop it and recompute its items")

    def open_shard(self, shard: str):
        """One shard as a `datasets.Dataset`; `CacheError` naming it when it is unreadable."""
        from datasets import Dataset

        try:
            ds = Dataset.from_file(shard)
            ds["key"]  # noqa: B018  the key column is read by every use; damage there shows now
            return ds
        except Exception as exc:
            raise self._damaged(shard, exc) from None

    def shard_items(self, shard: str):
        """`(key, problem or None)` for every row of `shard`, decoding its tensors (`validation.check_tensors`);
        raises when the shard itself cannot be read."""
        from .validation import check_tensors

        ds = self.open_shard(shard)
        for i in range(len(ds)):
            row = ds[i]
            try:
                tensors = {name: columns_to_tensor(row, name) for name in TENSOR_COLUMNS[self.kind]}
                tensors.update({k: row[k] for k in SCALAR_COLUMNS[self.kind] if k == "audio_lengths"})
                rule = {"reference": "video", "reference_audio": "audio"}.get(self.kind, self.kind)
                problem = check_tensors(rule, tensors) if rule in ("video", "audio", "text") else None
            except ValueError as exc:
                problem = str(exc)
            yield row["key"], problem

    def repair(self) -> tuple[list[tuple[str, str]], set[str]]:
        """Delete shards that cannot be read through (their items then count as not cached and a job
        recomputes them). Returns `(shard, reason)` for each, and the keys of readable rows whose tensors are
        unusable (`validation.check_tensors`), which a job should recompute too."""
        removed, unusable = [], set()
        for shard in self.shard_files():
            try:
                unusable |= {key for key, problem in self.shard_items(shard) if problem}
            except Exception as exc:
                os.remove(shard)
                removed.append((shard, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"))
        self._loaded = None
        return removed, unusable

    def write_shard(self, rows: list[dict[str, Any]]) -> str | None:
        """Write rows as one new shard, atomically (temp file + rename). Returns its path."""
        from datasets.arrow_writer import ArrowWriter

        if not rows:
            return None
        os.makedirs(self.path, exist_ok=True)
        name = f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.arrow"
        final = os.path.join(self.path, name)
        tmp = final + ".tmp"
        features = features_for(self.kind)
        try:
            writer = ArrowWriter(features=features, path=tmp)
            try:
                writer.write_batch({col: [r.get(col) for r in rows] for col in features})
                writer.finalize()
            finally:
                writer.close()
            os.replace(tmp, final)
        except Exception as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise _write_error(exc, self.path) from exc
        return final

    def load(self):
        """All rows as one memory-mapped `datasets.Dataset` (newest row per key), or None when empty."""
        from datasets import concatenate_datasets

        files = tuple(self.shard_files())
        if not files:
            return None
        if self._loaded is not None and self._loaded[0] == files:
            return self._loaded[1]
        parts = [self.open_shard(f) for f in files]
        ds = concatenate_datasets(parts) if len(parts) > 1 else parts[0]
        keys = ds["key"]
        last = {k: i for i, k in enumerate(keys)}
        if len(last) != len(keys):
            ds = ds.select(sorted(last.values()))
        self._loaded = (files, ds)
        return ds

    def fingerprints(self) -> dict[str, str]:
        """`key -> fingerprint` of every cached row (reads two small columns only)."""
        ds = self.load()
        if ds is None:
            return {}
        return dict(zip(ds["key"], ds["fingerprint"]))

    def index(self) -> dict[str, int]:
        ds = self.load()
        return {} if ds is None else {k: i for i, k in enumerate(ds["key"])}

    def row(self, i: int) -> dict[str, Any]:
        return self.load()[i]

    def read(self, i: int) -> dict[str, Any]:
        """Row `i` with its tensor columns decoded to tensors (`CacheError` naming the cache when it fails)."""
        try:
            row = self.row(i)
            out = {k: v for k, v in row.items() if not k.endswith(("_shape", "_dtype"))}
            for name in TENSOR_COLUMNS[self.kind]:
                out[name] = columns_to_tensor(row, name)
        except Exception as exc:
            raise CacheError(f"{self.path}: row {i} cannot be read ({type(exc).__name__}: {exc}); run "
                             f"{CACHE_COMMANDS[self.kind]} --repair") from None
        return out

    def remove_superseded(self) -> int:
        """Delete shards whose every row was replaced by a newer shard; returns how many."""
        seen: set[str] = set()
        removed = 0
        for f in reversed(self.shard_files()):
            keys = set(self.open_shard(f)["key"])
            if keys and keys <= seen:
                os.remove(f)
                removed += 1
            seen |= keys
        self._loaded = None
        return removed

    def prune(self, keep: set[str]) -> int:
        """Drop rows whose key is not in `keep` (items gone from the dataset); returns how many.

        Affected shards are rewritten with their still-current rows (a row superseded by a newer
        shard is dropped too), then deleted, so training never sees a removed item.
        """
        files = self.shard_files()
        winner: dict[str, tuple[str, int]] = {}
        keys_of: dict[str, list[str]] = {}
        for f in files:
            keys_of[f] = self.open_shard(f)["key"]
            for i, k in enumerate(keys_of[f]):
                winner[k] = (f, i)
        removed = sum(1 for k in winner if k not in keep)
        if not removed:
            return 0
        for f in files:
            if all(k in keep for k in keys_of[f]):
                continue
            rows = [i for i, k in enumerate(keys_of[f]) if k in keep and winner[k] == (f, i)]
            if rows:
                self.write_shard(self.open_shard(f).select(rows).to_list())
            os.remove(f)
        self._loaded = None
        return removed

    def clean_partial(self) -> None:
        """Drop temp files a killed job left behind (shards are renamed into place only when complete)."""
        if os.path.isdir(self.path):
            for f in os.listdir(self.path):
                if f.endswith(".tmp"):
                    os.remove(os.path.join(self.path, f))

    def push_to_hub(self, repo_id: str, **kwargs):
        """Push this cache as a Hub dataset (config name = cache kind)."""
        ds = self.load()
        if ds is None:
            raise ValueError(f"{self.path} holds no cache to push; run the cache job first.")
        kwargs.setdefault("config_name", self.kind)
        return ds.push_to_hub(repo_id, **kwargs)


def _write_error(exc: BaseException, folder: str) -> OSError:
    """An OSError naming `folder` and the cause for a failed shard write (pyarrow reports a full disk as a
    bare "iostream error")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return OSError(exc.errno, exc.strerror, exc.filename or folder)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < 64 * 2**20:
        return OSError(errno.ENOSPC, "No space left on device", folder)
    return OSError(errno.EIO, f"writing a cache shard failed ({type(exc).__name__}: {exc})", folder)


def rows_to_stores(cache_directory: str, kind: str, rows: Iterable[dict[str, Any]], shard_rows: int = 256) -> int:
    """Write `rows` into the `kind` store of `cache_directory` in shards; returns the row count."""
    store = CacheStore(cache_directory, kind)
    buf: list[dict[str, Any]] = []
    n = 0
    for r in rows:
        buf.append(r)
        if len(buf) >= shard_rows:
            store.write_shard(buf)
            n += len(buf)
            buf = []
    if buf:
        store.write_shard(buf)
        n += len(buf)
    return n
