"""`OUTPUT_DIR/logs/metrics.jsonl`: one JSON line per optimizer step (tracker-independent, easy to parse)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator


class MetricsLog:
    """Append-only step log; a resume first drops lines past the resumed step (a killed run's tail)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only lines of steps <= `step` (0: start a fresh file); a line a kill cut short is dropped."""
        if not self.path.is_file():
            return
        kept = [line for line, entry in _lines(self.path) if entry.get("step", 0) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(self.path)

    def write(self, step: int, logs: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        clean = {k: (v if isinstance(v, (int, str)) or (isinstance(v, float) and math.isfinite(v)) else str(v))
                 for k, v in logs.items()}
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **clean}) + "\n")
        except OSError as exc:  # a full disk reports no file name of its own
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc


def _lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """`(line, entry)` of every complete line; a line a killed run left half-written is skipped."""
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield line, entry


def read_metrics(path: str | Path) -> Iterator[dict[str, Any]]:
    """The entries of a metrics.jsonl file, in order (a half-written last line is skipped)."""
    for _line, entry in _lines(Path(path)):
        yield entry
