"""A run killed with SIGKILL and resumed with `--resume latest` ends bit-exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (
    REPO, SCRIPT, baseline_argv, baseline_run, lora_tensors, subprocess_env, workspace,
)
from ltxv2_diffusers.training.checkpoints import CheckpointDir
from ltxv2_diffusers.training.logging import read_metrics

pytestmark = pytest.mark.slow


def test_sigkill_then_resume_equals_uninterrupted(tmp_path_factory, tmp_path, capsys):
    ws = workspace(tmp_path_factory)
    reference = baseline_run(tmp_path_factory)  # accelerate launch, one process, never interrupted
    out = tmp_path / "run"
    argv = [sys.executable, str(SCRIPT), *baseline_argv(ws, out)]  # plain python this time
    proc = subprocess.Popen(argv, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    checkpoints = CheckpointDir(out)
    deadline = time.monotonic() + 600
    try:
        while not checkpoints.all():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "demo_lora.safetensors").exists()
    killed_at = [step for step, _ in checkpoints.all()]

    # the resumed run in this process (the kill needed a separate one)
    from ltxv2_diffusers.cli.train import main

    assert main([*argv[2:], "--resume", "latest"]) == 0
    assert f"resumed from {checkpoints.root / f'step-{killed_at[-1]:08d}'}" in capsys.readouterr().out

    a = lora_tensors(reference / "demo_lora.safetensors")
    b = lora_tensors(out / "demo_lora.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed LoRA differs from the uninterrupted run"
    ref_loss = [(m["step"], m["loss"]) for m in read_metrics(reference / "logs" / "metrics.jsonl")]
    got_loss = [(m["step"], m["loss"]) for m in read_metrics(out / "logs" / "metrics.jsonl")]
    assert got_loss == ref_loss  # the killed run's unsaved tail was dropped, every step logged once


def test_resume_rejects_a_different_lora(tmp_path_factory, tmp_path):
    """Resuming with other network flags is a clear error before the model loads, not a silent mismatch;
    forced through with --resume_override, the LoRA's own check still refuses it."""
    from ltxv2_diffusers.training.args import parse_args
    from ltxv2_diffusers.training.trainer import Trainer

    ws = workspace(tmp_path_factory)
    state = baseline_run(tmp_path_factory) / "checkpoints" / "step-00000002"
    args = parse_args(baseline_argv(ws, tmp_path, extra=["--network_args", "include_ff=True", "--resume", str(state)]))
    with pytest.raises(ValueError, match=r"--network_args None -> \['include_ff=True'\].*--resume_override network_args"):
        Trainer(args).run()
    args = parse_args(baseline_argv(ws, tmp_path, extra=["--network_args", "include_ff=True", "--resume", str(state),
                                                         "--resume_override", "network_args"]))
    with pytest.raises(ValueError, match="its LoRA does not match this run's"):
        Trainer(args).run()
