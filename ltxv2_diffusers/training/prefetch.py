"""Load the next batches in a background thread while the GPU trains on the current one."""

from __future__ import annotations

import queue
import threading
from typing import Any, Callable, Iterator

_DONE = object()


class Prefetcher:
    """Iterate `source` in a daemon thread, up to `depth` items ahead, in the same order.

    Reading cached latents and text embeddings (~20 MB an item at 768x512x121) and collating them
    then overlaps the step before instead of leaving the GPU idle. `prepare` runs on each item in the
    thread too (e.g. pinning tensors, so their copy to the GPU does not block). An exception raised
    by `source` reaches the consumer in place of the item that failed, after every earlier item.
    """

    def __init__(self, source: Iterator[Any], depth: int = 2, prepare: Callable[[Any], Any] | None = None):
        if depth < 1:
            raise ValueError(f"prefetch depth must be >= 1, got {depth}")
        self._source, self._prepare = source, prepare
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._fill, name="ltxv2-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for item in self._source:
                if self._prepare is not None:
                    item = self._prepare(item)
                if not self._put(("item", item)):
                    return
            self._put(("done", _DONE))
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> "Prefetcher":
        return self

    def __next__(self) -> Any:
        if self._finished:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._finished = True
        self._stop.set()
        if kind == "error":
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the thread (it finishes the item it is loading) and drop what it loaded ahead."""
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=30)

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
