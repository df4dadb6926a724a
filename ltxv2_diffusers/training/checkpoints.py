"""Training-state checkpoints: atomic folders that a resume continues from bit-exactly.

A checkpoint is `OUTPUT_DIR/checkpoints/step-00000100/` holding the trainable (LoRA) weights, the
optimizer and LR-scheduler states, RNG states, the step/epoch/data position and the LoRA files users
load. It is written under a hidden temporary name and renamed into place only when complete, so a
crash (even SIGKILL) never leaves a folder that `--resume latest` would pick up. An existing folder
is never overwritten.

Nothing in a checkpoint is pickled: optimizer, scheduler and RNG states are safetensors + JSON
(`safe_state.py`), so `--resume` reads data and never runs code from the folder. `training_state.json`
lists every file with its size and SHA-256; `verify_checkpoint` checks them and that the weights are
finite, and `--resume latest` takes the newest checkpoint that passes (older folders from before the
manifest are checked by reading them). Old checkpoints' `optimizer_and_rng.pt` is read with
`torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ltxv2_diffusers.training.safe_state import load_state, save_state

logger = logging.getLogger("ltxv2_diffusers.training")

STATE_FILE = "training_state.json"
OPTIMIZER_FILE = "optimizer_and_rng.safetensors"
LEGACY_OPTIMIZER_FILE = "optimizer_and_rng.pt"  # pickled by older versions; read with weights_only=True
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
        try:
            fill(tmp)
            _fsync_tree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
            raise
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


def clean_partial_files(output_dir: str | os.PathLike) -> list[Path]:
    """Remove the temp files of LoRA writes a crash interrupted (`.NAME.safetensors.*.tmp`, beside the
    LoRA and in its `-diffusers` folder); the files users load are only ever replaced whole."""
    root = Path(output_dir)
    removed = []
    for folder in [root, *(p for p in root.glob("*-diffusers") if p.is_dir())]:
        for path in folder.glob(".*.safetensors.*.tmp"):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def saved_items(directory: Path) -> list[str] | None:
    """The item keys a checkpointed run trained on (None when it did not record them)."""
    payload = json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8"))
    return payload.get("items")


def saved_batching(directory: Path) -> dict[str, Any] | None:
    """The processes and global batch sizes of a checkpointed run (None when it did not record them)."""
    payload = json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8"))
    return payload.get("batching")


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """`--resume latest` → the newest intact checkpoint (None if there is none yet; damaged ones are
    skipped with a warning naming the file); a path → itself, which must be intact."""
    if resume is None:
        return None
    if resume == "latest":
        found = CheckpointDir(output_dir).all()
        damaged = []
        for _step, path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                if damaged:
                    logger.warning("--resume latest: %d newer checkpoint(s) are damaged and skipped; resuming from %s",
                                   len(damaged), path)
                return path
            logger.warning("--resume latest: skipping damaged checkpoint %s", problem)
            damaged.append(path)
        if damaged:
            raise ValueError(f"--resume latest: every checkpoint in {CheckpointDir(output_dir).root} is damaged "
                             "(see the warnings above); start without --resume, or from the LoRA with "
                             "--network_weights")
        return None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume {resume}: not a training-state folder (no {STATE_FILE}); "
                                "pass OUTPUT_DIR/checkpoints/step-… or 'latest'")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise ValueError(f"--resume {resume}: damaged checkpoint: {problem}; pass an older one or 'latest'")
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"size", "sha256"}}` of every file under `directory` but the state file."""
    out = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != STATE_FILE):
        out[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return out


def _finite_file(path: Path) -> str | None:
    """Why the safetensors file `path` is unusable (unreadable, truncated, NaN/inf), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    return f"{path}: tensor {key!r} holds NaN/inf"
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt files
        return f"{path}: unreadable ({type(exc).__name__}: {exc})"
    return None


def verify_checkpoint(path: Path) -> str | None:
    """Why checkpoint folder `path` cannot be resumed from (naming the bad file), or None when it is intact."""
    path = Path(path)
    state_file = path / STATE_FILE
    try:
        payload = json.loads(state_file.read_text(encoding="utf-8"))
        TrainingProgress.from_json(payload["progress"])
        int(payload["progress"]["global_step"])
    except Exception as exc:
        return f"{state_file}: unreadable ({type(exc).__name__}: {exc})"
    manifest = payload.get("files")
    if manifest is not None:
        for name, entry in manifest.items():
            file = path / name
            if not file.is_file():
                return f"{file}: missing"
            if file.stat().st_size != entry["size"]:
                return f"{file}: {file.stat().st_size} bytes, {entry['size']} when saved (truncated or replaced)"
            if _sha256(file) != entry["sha256"]:
                return f"{file}: its content changed since it was saved (checksum differs)"
    elif not (path / OPTIMIZER_FILE).is_file() and not (path / LEGACY_OPTIMIZER_FILE).is_file():
        return f"{path / OPTIMIZER_FILE}: missing"
    for name in ("trainable.safetensors", "master_weights.safetensors"):
        file = path / name
        if name == "trainable.safetensors" or file.exists():
            problem = _finite_file(file) if file.is_file() else f"{file}: missing"
            if problem:
                return problem
    if manifest is None and (path / LEGACY_OPTIMIZER_FILE).is_file() and not (path / OPTIMIZER_FILE).is_file():
        try:
            _load_legacy_blob(path / LEGACY_OPTIMIZER_FILE)
        except ValueError as exc:
            return str(exc)
    elif manifest is None:
        try:
            load_state(path / OPTIMIZER_FILE)
        except ValueError as exc:
            return str(exc)
    return None


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


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    from ltxv2_diffusers.lora import NonFiniteWeights

    bad = [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteWeights(f"{what}: {len(bad)} tensor(s) hold NaN/inf (e.g. {bad[:3]}); not saved")


def save_training_state(directory: Path, model: torch.nn.Module, optimizer, lr_scheduler,
                        progress: TrainingProgress, extra: dict[str, Any] | None = None, master=None) -> None:
    """Write trainable weights, optimizer/scheduler/RNG states and progress into `directory`.

    `master`: the fp32 master weights (`speed.MasterWeights`) of a bf16-compute run; saved
    too, because the bf16 LoRA alone would lose what the optimizer steps. Raises `NonFiniteWeights`
    (nothing written) when a weight is NaN/inf.
    """
    trainable = trainable_state_dict(model)
    _check_finite(trainable, "the LoRA weights")
    masters = None
    if master is not None:
        masters = {f"{i:06d}": t.cpu().contiguous() for i, t in enumerate(master.state_dict())}
        _check_finite(masters, "the fp32 master weights")
    save_file(trainable, str(directory / "trainable.safetensors"))
    if masters is not None:
        save_file(masters, str(directory / "master_weights.safetensors"))
    save_state(directory / OPTIMIZER_FILE, {"optimizer": optimizer.state_dict(),
                                            "lr_scheduler": lr_scheduler.state_dict(), "rng": rng_states()})
    payload = {"progress": progress.to_json(), **(extra or {}), "files": file_manifest(directory)}
    # written last: its presence marks the folder complete even before the rename
    (directory / STATE_FILE).write_text(json.dumps(payload, indent=2, default=str))


def _load_legacy_blob(path: Path) -> dict[str, Any]:
    """An older checkpoint's pickled optimizer/RNG file, read with `weights_only=True`: plain data only,
    never the code a pickle can carry."""
    numpy_globals = [np.dtype, np.ndarray, type(np.dtype(np.uint32))]
    try:
        numpy_globals.append(np._core.multiarray._reconstruct)  # numpy 2
    except AttributeError:
        numpy_globals.append(np.core.multiarray._reconstruct)
    try:
        with torch.serialization.safe_globals(numpy_globals):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: refused to load (it is read with weights_only=True, which runs no code from "
                         f"the file, and it holds more than plain data: {type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None


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
    mismatched = [name for name, value in weights.items() if tuple(value.shape) != tuple(params[name].shape)]
    if mismatched:
        name = mismatched[0]
        raise ValueError(f"--resume {directory}: its LoRA has other shapes than this run's ({name}: "
                         f"{tuple(weights[name].shape)} saved, {tuple(params[name].shape)} now); resume with the "
                         "same --network_dim/--network_args")
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
    if (directory / OPTIMIZER_FILE).is_file():
        blob = load_state(directory / OPTIMIZER_FILE)
    else:
        logger.warning("%s is from an older version: read with torch.load(weights_only=True), which runs no code "
                       "from it; the next save writes %s instead", directory / LEGACY_OPTIMIZER_FILE, OPTIMIZER_FILE)
        blob = _load_legacy_blob(directory / LEGACY_OPTIMIZER_FILE)
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


def saved_args(directory: Path) -> dict[str, Any]:
    """The flags a checkpoint was saved with (empty for checkpoints that did not record them)."""
    payload = json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8"))
    return dict(payload.get("args") or {})
