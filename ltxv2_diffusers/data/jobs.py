"""Caching map jobs: items -> video latents, audio latents, text embeddings (one Arrow cache each).

Each job is a batched `datasets` `.map` over the items still to do (`num_proc` workers, `with_rank`
picks the GPU). Every mapped batch is written at once as its own Arrow shard in the item's cache
directory, so a killed job keeps everything finished. An item is skipped when its cache row carries
the same fingerprint, which depends only on what changes the output: the encoder's identity and dtype,
tiling, the item's media (path, size, mtime), frame window, bucket, sample rate, caption, and the
cache code version. Bad items are reported `(file, reason)` and every good item is still cached.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .encoders import (
    ItemEncoder,
    TextEmbeddingEncoder,
    content_hash,
    failure_reason,
    item_media,
    item_to_row,
    row_to_item,
)
from .stores import CacheStore, tensor_to_columns

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# the job


@dataclass
class JobReport:
    """What a cache job did. `bad` holds `(file, reason)` for listing and encoding failures alike."""

    kind: str
    cached: int = 0
    skipped: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)
    removed_shards: list[tuple[str, str]] = field(default_factory=list)  # damaged shards --repair dropped
    recomputed: int = 0  # items --repair cached again because their rows were unusable (NaN, bad shapes)

    @property
    def available(self) -> int:
        return self.cached + self.skipped

    def summary(self) -> str:
        lines = [f"{self.kind} cache: {self.cached} cached, {self.skipped} already cached, {len(self.bad)} bad"]
        lines += [f"  removed damaged shard {path} ({reason}); its items were cached again"
                  for path, reason in self.removed_shards]
        if self.recomputed:
            lines.append(f"  {self.recomputed} item(s) whose cached rows were unusable were cached again")
        lines += [f"  bad: {path}: {reason}" for path, reason in self.bad]
        return "\n".join(lines)

    def exit_code(self, strict: bool = False) -> int:
        """Non-zero when no item is cached at all, or with `strict` when any item was bad."""
        return 1 if self.available == 0 or (strict and self.bad) else 0


def _die_with(parent_pid: int | None) -> None:
    """In a map worker: ask the kernel to kill this process when the job's process dies (Linux), so a
    killed job leaves no workers encoding on for minutes; exit at once if it is already gone."""
    global _WATCHED_PARENT
    if parent_pid is None or parent_pid == os.getpid() or _WATCHED_PARENT == parent_pid:
        return
    _WATCHED_PARENT = parent_pid
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: on the death of the process that forked us
    except (OSError, AttributeError):
        pass  # not Linux: workers end with the pool as before
    if not _alive(parent_pid):
        os._exit(1)


_WATCHED_PARENT: int | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _map_batch(batch: dict[str, list], rank: int | None, encoder: ItemEncoder, job_fingerprint: str,
               kind: str, shard_size: int, parent_pid: int | None = None) -> dict[str, list]:
    _die_with(parent_pid)
    n = len(batch["key"])
    items = [row_to_item({k: batch[k][i] for k in batch}) for i in range(n)]
    out = {"key": [], "error": [], "media": [], "shard": []}
    pending: dict[str, list[dict]] = {}
    shard_of: dict[str, str] = {}

    def flush(cache_dir: str) -> None:
        rows = pending.pop(cache_dir, [])
        path = CacheStore(cache_dir, kind).write_shard(rows)
        shard_of.update((r["key"], path) for r in rows)

    for item, result in encoder.encode_items(items, rank):
        out["key"].append(item.key)
        out["media"].append(item_media(item) if kind != "text" else (item_media(item) + " (caption)"))
        if isinstance(result, BaseException):
            out["error"].append(failure_reason(result))
            continue
        out["error"].append(None)
        row = {"key": item.key, "fingerprint": encoder.item_fingerprint(item, job_fingerprint), **result}
        pending.setdefault(item.cache_directory, []).append(row)
        # Write as we go: a killed job loses at most one unfinished shard.
        if len(pending[item.cache_directory]) >= shard_size:
            flush(item.cache_directory)
    for cache_dir in list(pending):
        flush(cache_dir)
    out["shard"] = [shard_of.get(k) if e is None else None for k, e in zip(out["key"], out["error"])]
    return out


def pending_items(items: Iterable, encoder: ItemEncoder, job_fingerprint: str | None = None,
                  redo: set[tuple[str, str]] = frozenset()) -> tuple[list, int]:
    """`(items whose cache row is missing or stale, or whose `(cache_directory, key)` is in `redo`, number
    already cached)`."""
    job_fingerprint = job_fingerprint or encoder.fingerprint()
    known: dict[str, dict[str, str]] = {}
    todo, done = [], 0
    for item in items:
        cache_dir = item.cache_directory
        if cache_dir not in known:
            store = CacheStore(cache_dir, encoder.kind)
            store.clean_partial()
            known[cache_dir] = store.fingerprints()
        if (known[cache_dir].get(item.key) == encoder.item_fingerprint(item, job_fingerprint)
                and (cache_dir, item.key) not in redo):
            done += 1
        else:
            todo.append(item)
    return todo, done


def run_cache_job(items: list, encoder: ItemEncoder, *, listing_bad: Iterable[tuple[str, str]] = (),
                  batch_size: int = 4, num_proc: int | None = None, skip_existing: bool = True,
                  progress: bool = True, map_batch_size: int = 64, repair: bool = False) -> JobReport:
    """Cache `items` with `encoder` through a batched `datasets` map; returns a `JobReport`.

    Each map call gets `map_batch_size` items (decoding runs ahead across all of them) and writes an
    Arrow shard every `batch_size` cached items.

    `num_proc > 1` runs that many workers (each with its own model; on CUDA, worker `rank` uses GPU
    `rank % device_count`). With `skip_existing`, items whose row has the same fingerprint are skipped.
    With `repair` (and without `skip_existing`, which recomputes everything anyway) damaged shards are
    deleted first, so their items count as not cached, and items whose cached tensors are unusable
    (`validation.check_tensors`) are recomputed.
    """
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar

    kind = encoder.kind
    report = JobReport(kind=kind, bad=list(listing_bad))
    redo: set[tuple[str, str]] = set()
    for cache_dir in sorted({it.cache_directory for it in items}):
        store = CacheStore(cache_dir, kind)
        store.clean_partial()
        if repair or not skip_existing:
            removed, unusable = store.repair()
            report.removed_shards += removed
            redo |= {(cache_dir, key) for key in unusable}
    remove_stale_job_folders()
    job_fp = encoder.fingerprint()
    if skip_existing:
        todo, report.skipped = pending_items(items, encoder, job_fp, redo)
        report.recomputed = len({(it.cache_directory, it.key) for it in todo} & redo)
    else:
        todo = list(items)
    if not todo:
        return report
    keys = [it.key for it in todo]
    placed = [(it.cache_directory, it.key) for it in todo]
    if len(set(placed)) != len(placed):
        dup = sorted({k for d, k in placed if placed.count((d, k)) > 1})
        raise ValueError(f"item keys must be unique per cache_directory; duplicated: {', '.join(dup[:5])} "
                         "(two media files with one stem, e.g. clip.mp4 and clip.mov?)")
    workers = num_proc if num_proc and num_proc > 1 else None
    (enable_progress_bar if progress else disable_progress_bar)()
    with tempfile.TemporaryDirectory(prefix=_job_dir_prefix(os.getpid())) as tmp:
        ds = _items_dataset(todo, tmp)
        with _spawned_workers(workers is not None):
            result = _map(ds, encoder, job_fp, kind, batch_size, max(int(map_batch_size), int(batch_size)),
                          min(workers, len(todo)) if workers else None, keys)
        result = {c: result[c] for c in ("key", "error", "media", "shard")}
    for key, error, media, shard in zip(result["key"], result["error"], result["media"], result["shard"]):
        if error is None:
            report.cached += 1
            if shard not in report.shards:
                report.shards.append(shard)
        else:
            report.bad.append((media, error))
    for cache_dir in sorted({it.cache_directory for it in todo}):
        CacheStore(cache_dir, kind).remove_superseded()
    return report


_JOB_DIR_PREFIX = "ltxv2-job-"


def _job_dir_prefix(pid: int) -> str:
    """A job's temp-folder prefix: its PID and host, since a temp folder shared by several hosts or
    containers holds PIDs that only their own host can check."""
    import socket

    return f"{_JOB_DIR_PREFIX}{pid}@{socket.gethostname()}-"


def remove_stale_job_folders() -> list[str]:
    """Delete the temp folders of this host's jobs whose process is gone (a SIGKILL skips their cleanup)."""
    import re
    import shutil

    removed = []
    root = tempfile.gettempdir()
    pattern = re.compile(rf"^{_JOB_DIR_PREFIX}(\d+)@")
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        match = pattern.match(name)
        if not match:
            continue
        pid = int(match.group(1))
        if name.startswith(_job_dir_prefix(pid)) and pid != os.getpid() and not _alive(pid):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            removed.append(os.path.join(root, name))
    return removed


def _items_dataset(items: list, folder: str):
    """The items as a file-backed dataset: memory-mapped, and fingerprinted by file rather than by
    pickling an in-memory table (which fails on some Python/dill/pyarrow combinations)."""
    from datasets import Dataset
    from datasets.arrow_writer import ArrowWriter

    rows = [item_to_row(it) for it in items]
    path = os.path.join(folder, "items.arrow")
    with ArrowWriter(path=path) as writer:
        writer.write_batch({k: [r[k] for r in rows] for k in rows[0]})
        writer.finalize()
    return Dataset.from_file(path)


class _spawned_workers:
    """Map workers are spawned, not forked: a forked child deadlocks on the parent's OpenMP/tokenizer
    threads, and CUDA cannot be used in a forked child at all."""

    def __init__(self, active: bool):
        self.active = active

    def __enter__(self):
        if self.active:
            import multiprocess

            self.previous = multiprocess.get_start_method(allow_none=True)
            multiprocess.set_start_method("spawn", force=True)

    def __exit__(self, *exc):
        if self.active:
            import multiprocess

            multiprocess.set_start_method(self.previous, force=True)
        return False


def _map(ds, encoder, job_fp, kind, shard_size, map_batch_size, num_proc, keys):
    if num_proc:  # give every worker work: no map batch larger than its share
        map_batch_size = min(map_batch_size, max(1, -(-len(ds) // num_proc)))
    return ds.map(
        _map_batch,
        batched=True,
        batch_size=max(1, int(map_batch_size)),
        with_rank=True,
        num_proc=num_proc,
        fn_kwargs={"encoder": encoder, "job_fingerprint": job_fp, "kind": kind, "shard_size": max(1, int(shard_size)),
                   "parent_pid": os.getpid()},
        remove_columns=ds.column_names,
        new_fingerprint=content_hash("map", job_fp, keys),
        desc=f"caching {kind}",
        load_from_cache_file=False,
        cache_file_name=os.path.join(os.path.dirname(ds.cache_files[0]["filename"]), "results.arrow"),
    )


# --------------------------------------------------------------------------------------------------
# sample prompts


def cache_sample_prompts(prompts: list[str], encoder: TextEmbeddingEncoder, cache_directory: str,
                         batch_size: int = 8) -> JobReport:
    """Cache text embeddings of sample prompts (keyed by the prompt text) so training needs no text encoder."""
    store = CacheStore(cache_directory, "sample_prompts")
    job_fp = encoder.fingerprint()
    have = store.fingerprints()
    report = JobReport(kind="sample_prompts")
    todo = [p for p in prompts if have.get(p) != content_hash(job_fp, p)]
    report.skipped = len(prompts) - len(todo)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        text, mask = encoder.encode_prompts(chunk)
        rows = [{"key": p, "fingerprint": content_hash(job_fp, p), "prompt": p,
                 **tensor_to_columns("text", text[i]), **tensor_to_columns("text_mask", mask[i])}
                for i, p in enumerate(chunk)]
        report.shards.append(store.write_shard(rows))
        report.cached += len(rows)
    store.remove_superseded()
    return report


def load_sample_prompt_embeddings(cache_directory: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """`prompt -> (text [L,D], mask [L])` as cached by `ltxv2-cache-text-encoder-outputs --sample_prompts`."""
    store = CacheStore(cache_directory, "sample_prompts")
    out = {}
    for key, i in store.index().items():
        row = store.read(i)
        out[key] = (row["text"], row["text_mask"].bool())
    return out
