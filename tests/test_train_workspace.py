"""Shared training workspace for the end-to-end tests (imported by test_train_e2e/test_resume/test_learning).

Built once per pytest session on disk: a tiny random LTX-2 written as an official single file, a tiny
Gemma-3, four synthetic clips with sound, their three caches (made by the real cache commands), and a
baseline `accelerate launch` training run the other tests compare against.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_ltxv2_lora.py"
STEPS = 6
SAVE_EVERY = 2


_BASE: list[Path] = []


def session_dir() -> Path:
    """A private folder for this test process, removed at exit.

    Not pytest's numbered basetemp: parallel pytest sessions on one machine prune each other's
    numbered folders, which would delete the shared workspace mid-run.
    """
    if not _BASE:
        path = Path(tempfile.mkdtemp(prefix="ltxv2-train-tests-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _BASE.append(path)
    return _BASE[0]


def _locked_build(base: Path, name: str, build):
    """Build `base/name` once per session (a `.done` marker makes later calls reuse it)."""
    target = base / name
    done = base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if target.exists():
                shutil.rmtree(target)
            build(target)
            done.write_text("ok")
    return target


def workspace(tmp_path_factory):
    """The cached av workspace (`DemoWorkspace`); dataset batch_size 2 so two processes split it."""
    from ltxv2_diffusers.cli.demo import DemoWorkspace, run_cache_jobs, write_workspace

    base = session_dir()

    def build(target: Path):
        ws = write_workspace(target, num_clips=4, batch_size=2)
        run_cache_jobs(ws)

    root = _locked_build(base, "ltxv2_train_ws", build)
    return DemoWorkspace(root, root / "model" / "ltx-2-tiny.safetensors", root / "gemma-3-tiny",
                         root / "data" / "dataset.toml", root / "prompts.txt")


def baseline_argv(ws, output_dir: Path, steps: int = STEPS, extra=()) -> list[str]:
    """The flags every comparison run shares (only the launcher and output dir differ)."""
    return ws.train_argv(output_dir, steps, ["--save_every_n_steps", str(SAVE_EVERY), "--network_dim", "4",
                                             "--network_alpha", "2", "--lr_scheduler", "linear",
                                             "--lr_warmup_steps", "2", "--gradient_accumulation_steps", "2",
                                             *extra])


def subprocess_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two processes on two shared cores
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def accelerate_launch(argv: list[str], num_processes: int = 1, env=None, timeout: int = 600):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    # On a CPU-only host `--multi_gpu` starts torchrun workers that Accelerate joins with gloo.
    launcher += ["--multi_gpu"] if num_processes > 1 else ["--cpu"]
    proc = subprocess.run([*launcher, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout,
                          env=env or subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def baseline_run(tmp_path_factory) -> Path:
    """One uninterrupted single-process `accelerate launch` run (output dir), shared by several tests."""
    ws = workspace(tmp_path_factory)
    base = session_dir()
    return _locked_build(base, "ltxv2_train_baseline", lambda out: accelerate_launch(baseline_argv(ws, out)))


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_workspace_has_all_three_caches(tmp_path_factory):
    ws = workspace(tmp_path_factory)
    from ltxv2_diffusers.data.batching import BatchManager
    from ltxv2_diffusers.data.config import load_dataset_config

    manager = BatchManager.from_config(load_dataset_config(ws.dataset_config), mode="av", seed=0)
    batch = next(manager.iter_epoch(0))
    assert len(manager) == 2 and len(batch["keys"]) == 2
    assert {"latents", "audio_latents", "audio_lengths", "text", "text_mask"} <= set(batch)
    assert ws.model.is_file() and (ws.text_encoder / "config.json").is_file()


@pytest.fixture(scope="session")
def train_ws(tmp_path_factory):
    return workspace(tmp_path_factory)
