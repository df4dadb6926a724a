"""Cached tensors checked before training starts: readable, the right shapes and dtypes, finite.

A bad row found mid-run (after a 19B model took minutes to load) either crashes the run or, for a NaN,
silently skips every step it lands in. So the batch manager checks every cached item when it opens the
caches: an unreadable Arrow shard stops with its path and the repair command; a bad item (wrong shape
or dtype, NaN/inf, an unreadable per-item file) is named with its file and left out of training.

Checking reads every tensor once. Shards and per-item files never change after they are written (a
job writes new ones), so each file checked is remembered in `CACHE_DIR/.ltxv2-validated.json` by name,
size and mtime, with the bad items it held; later runs re-read only new files.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Iterable

import torch

logger = logging.getLogger(__name__)

MEMO_NAME = ".ltxv2-validated.json"
RULES_VERSION = 1  # bump when the rules change: every file is checked again
VIDEO_CHANNELS = 128
AUDIO_CHANNELS, AUDIO_MEL_BINS = 8, 16


def squeeze_leading(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """`t` without leading size-1 dimensions beyond `ndim` (caches may store a batch of one)."""
    while t.dim() > ndim and t.shape[0] == 1:
        t = t[0]
    return t


def _all_finite(t: torch.Tensor) -> bool:
    """Whether no element is NaN/inf, read as the sum's finiteness: any NaN/inf element makes the sum NaN/inf, and
    a sum of finite cached values overflows only at magnitudes no latent or embedding has (several times faster
    on CPU than an element-wise check, bf16 above all). fp16 sums in fp32, as its range is small."""
    total = t.sum(dtype=torch.float32) if t.dtype == torch.float16 else t.sum()
    return bool(torch.isfinite(total))


def _float_problem(name: str, t: torch.Tensor, ndim: int) -> str | None:
    if not t.is_floating_point():
        return f"`{name}` is {str(t.dtype).removeprefix('torch.')}, not a float tensor"
    if t.dim() != ndim:
        return f"`{name}` has shape {list(t.shape)}, expected {ndim} dimensions"
    if t.numel() == 0:
        return f"`{name}` is empty ({list(t.shape)})"
    if not _all_finite(t):
        return f"`{name}` holds NaN/inf"
    return None


def check_tensors(kind: str, tensors: dict[str, Any]) -> str | None:
    """Why the decoded tensors of one cached item of `kind` (`video`, `audio`, `text`) are unusable, or None."""
    if kind == "video":
        latents = squeeze_leading(tensors["latents"], 4)
        problem = _float_problem("latents", latents, 4)
        if problem is None and latents.shape[0] != VIDEO_CHANNELS:
            problem = f"`latents` have {latents.shape[0]} channels, LTX-2 video latents have {VIDEO_CHANNELS}"
        return problem
    if kind == "audio":
        latents = squeeze_leading(tensors["audio_latents"], 3)
        problem = _float_problem("audio_latents", latents, 3)
        if problem is None and (latents.shape[0], latents.shape[-1]) != (AUDIO_CHANNELS, AUDIO_MEL_BINS):
            problem = (f"`audio_latents` have shape {list(latents.shape)}, LTX-2 audio latents are "
                       f"[{AUDIO_CHANNELS}, frames, {AUDIO_MEL_BINS}]")
        lengths = tensors.get("audio_lengths")
        if problem is None and lengths is not None:
            n = torch.as_tensor(lengths).reshape(-1)
            if n.numel() != 1 or n.is_floating_point() or not 0 <= int(n[0]) <= latents.shape[1]:
                problem = f"`audio_lengths` {n.tolist()} is not a count of 0..{latents.shape[1]} latent frames"
        return problem
    text = squeeze_leading(tensors["text"], 2)
    problem = _float_problem("text", text, 2)
    if problem is None:
        mask = tensors["text_mask"].reshape(-1) if tensors["text_mask"].dim() else tensors["text_mask"]
        if mask.is_floating_point() or mask.dim() != 1 or mask.shape[0] != text.shape[0]:
            problem = (f"`text_mask` ({str(mask.dtype).removeprefix('torch.')} {list(mask.shape)}) does not fit "
                       f"`text` of {text.shape[0]} tokens (expected an int/bool mask of {text.shape[0]})")
        elif not bool(mask.bool().any()):
            problem = "`text_mask` marks no token"
    return problem


class ValidationMemo:
    """The files of one cache directory already checked: `{relative path: [size, mtime_ns, {key: reason}]}`."""

    def __init__(self, cache_directory: str):
        self.root = cache_directory
        self.path = os.path.join(cache_directory, MEMO_NAME)
        self.entries: dict[str, list] = {}
        self.changed = False
        try:
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
            if data.get("version") == RULES_VERSION:
                self.entries = dict(data.get("files", {}))
        except (OSError, ValueError, AttributeError):
            pass  # none yet, or unreadable: check everything again

    def _stamp(self, path: str) -> tuple[str, int, int]:
        st = os.stat(path)
        return os.path.relpath(path, self.root), st.st_size, st.st_mtime_ns

    def known(self, path: str) -> dict[str, str] | None:
        """The bad items recorded for `path` when it is unchanged since it was checked, else None."""
        name, size, mtime = self._stamp(path)
        entry = self.entries.get(name)
        if entry and entry[0] == size and entry[1] == mtime:
            return dict(entry[2])
        return None

    def record(self, path: str, bad: dict[str, str]) -> None:
        name, size, mtime = self._stamp(path)
        self.entries[name] = [size, mtime, dict(bad)]
        self.changed = True

    def save(self) -> None:
        """Best effort: a read-only cache is checked again next time, nothing worse."""
        if not self.changed:
            return
        live = {k: v for k, v in self.entries.items() if os.path.exists(os.path.join(self.root, k))}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump({"version": RULES_VERSION, "files": live}, handle)
            os.replace(tmp, self.path)
        except OSError:
            try:
                os.remove(tmp)
            except OSError:
                pass


def check_files(files: Iterable[str], read: Callable[[str], Iterable[tuple[str, str | None]]],
                memo: ValidationMemo) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Run `read(file)` -> `(key, problem or None)` pairs over files not checked before.

    Returns `(damaged {file: reason}, bad items {file: {key: problem}})`. A file `read` cannot get through
    is damaged; it is not remembered, so a repaired file is checked again."""
    damaged: dict[str, str] = {}
    bad: dict[str, dict[str, str]] = {}
    files = list(files)
    new = sum(1 for path in files if memo.known(path) is None)
    if new:  # the first check reads every tensor: say why the start pauses
        logger.info("checking %d new cache file(s) in %s (shapes, dtypes, NaN/inf; once)", new, memo.root)
    for path in files:
        known = memo.known(path)
        if known is None:
            try:
                known = {key: problem for key, problem in read(path) if problem}
            except Exception as exc:  # pyarrow/safetensors report damage with many error types
                damaged[path] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                continue
            memo.record(path, known)
        if known:
            bad[path] = known
    return damaged, bad
