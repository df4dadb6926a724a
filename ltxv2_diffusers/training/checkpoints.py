"""Training-state checkpoints: atomic folders that a resume continues from bit-exactly.

A checkpoint is `OUTPUT_DIR/checkpoints/step-00000100/` holding the trainable (LoRA) weights, the
optimizer and LR-scheduler states, RNG states, the step/epoch/data position and the LoRA files users
load. It is written under a hidden temporary name and renamed into place only when complete, so a
crash (even SIGKILL) never leaves a folder that `--resume latest` would pick up. An existing folder
is never overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "training_state.json"
_NAME = re.compile(r"^step-(\d{8})(?:\.(\d+))?$")


@dataclasses.dataclass
class TrainingProgress:
    """Where a run stands: optimizer steps done, data position, and the loss history for the plot."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    nonfinite_in_a_row: int = 0
    skipped_steps: list[int] = dataclasses.field(default_factory=list)
    loss_history: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainingProgress":
        fields = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in data.items() if k in fields})
        out.loss_history = [tuple(x) for x in out.loss_history]
        return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


class CheckpointDir:
    """The `checkpoints/` folder of a run: list, find the latest, write atomically, prune."""

    def __init__(self, output_dir: str | os.PathLike):
        self.root = Path(output_dir) / "checkpoints"

    def all(self) -> list[tuple[int, Path]]:
        """Complete checkpoints as `(step, path)`, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for path in self.root.iterdir():
            match = _NAME.match(path.name)
            if match and path.is_dir() and (path / STATE_FILE).is_file():
                found.append((int(match.group(1)), int(match.group(2) or 0), path))
        return [(step, path) for step, _n, path in sorted(found)]

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1][1] if found else None

    def clean_partial(self) -> list[Path]:
        """Remove temporary folders left by a crash mid-write; returns what was removed."""
        removed = []
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name.startswith(".tmp-"):
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed

    def write(self, step: int, fill: Callable[[Path], None]) -> Path:
        """Create the checkpoint of `step`: `fill(tmp_dir)` writes files, then one rename publishes it."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".tmp-step-{step:08d}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        fill(tmp)
        _fsync_tree(tmp)
        final = self.root / f"step-{step:08d}"
        n = 0
        while final.exists():  # a resumed-from-older run reaching the same step: keep both
            n += 1
            final = self.root / f"step-{step:08d}.{n}"
        os.rename(tmp, final)
        _fsync_dir(self.root)
        return final

    def prune(self, keep_after_step: int, keep: Path | None = None) -> list[Path]:
        """Delete checkpoints of steps <= `keep_after_step` (never `keep`)."""
        removed = []
        for step, path in self.all():
            if step <= keep_after_step and path != keep:
                shutil.rmtree(path)
                removed.append(path)
        return removed


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`--resume latest` → the newest complete checkpoint (None if there is none yet); a path → itself."""
    if resume is None:
        return None
    if resume == "latest":
        return CheckpointDir(output_dir).latest()
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a training-state folder (no {STATE_FILE}); "
                                "pass OUTPUT_DIR/checkpoints/step-… or 'latest'")
    return path


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (the LoRA), by their names in `model`."""
    # copies: with fp32 masters the LoRA tensors are views of one buffer, which safetensors refuses
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_training_state(directory: Path, model: torch.nn.Module, optimizer, lr_scheduler,
                        progress: TrainingProgress, extra: dict[str, Any] | None = None, master=None) -> None:
    """Write trainable weights, optimizer/scheduler/RNG states and progress into `directory`.

    `master`: the fp32 master weights (`speed.MasterWeights`) of a bf16-compute run; saved
    too, because the bf16 LoRA alone would lose what the optimizer steps.
    """
    save_file(trainable_state_dict(model), str(directory / "trainable.safetensors"))
    if master is not None:
        save_file({f"{i:06d}": t.cpu().contiguous() for i, t in enumerate(master.state_dict())},
                  str(directory / "master_weights.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "rng": rng_states()}, directory / "optimizer_and_rng.pt")
    payload = {"progress": progress.to_json(), **(extra or {})}
    # written last: its presence marks the folder complete even before the rename
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=2, default=str))


def load_training_state(directory: Path, model: torch.nn.Module, optimizer, lr_scheduler,
                        master=None) -> TrainingProgress:
    """Restore what `save_training_state` wrote; the model must already carry the same LoRA."""
    weights = load_file(str(directory / "trainable.safetensors"))
    params = dict(model.named_parameters())
    expected = {name for name, p in params.items() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:5]
        unexpected = sorted(set(weights) - expected)[:5]
        raise ValueError(f"--resume {directory}: its LoRA does not match this run's (missing {missing}, "
                         f"unexpected {unexpected}); resume with the same --ltx_mode/--network_* flags")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    if master is not None:
        saved = directory / "master_weights.safetensors"
        if saved.is_file():
            tensors = load_file(str(saved))
            master.load_state_dict([tensors[k] for k in sorted(tensors)])
        else:  # saved by a run without masters: they start from the (restored) model weights
            with torch.no_grad():
                for m, p in zip(master.master_params, master.model_params):
                    m.copy_(p.float())
    blob = torch.load(directory / "optimizer_and_rng.pt", map_location="cpu", weights_only=False)
    state = blob["optimizer"]
    if master is not None:  # checkpoints from before the masters were one flat tensor
        try:
            state = master.optimizer_state_from_per_parameter(state)
        except ValueError as exc:
            raise ValueError(f"--resume {directory}: {exc}") from None
    optimizer.load_state_dict(state)
    lr_scheduler.load_state_dict(blob["lr_scheduler"])
    set_rng_states(blob["rng"])
    payload = json.loads((directory / STATE_FILE).read_text())
    return TrainingProgress.from_json(payload["progress"])
