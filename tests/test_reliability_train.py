"""Reliability of training runs (docs/reliability.md): each test reproduces a fault on the tiny model and
checks what the user sees (one line, exit code) and what is kept (no broken LoRA or checkpoint)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltxv2_diffusers import plugins
from ltxv2_diffusers.cli.train import main
from ltxv2_diffusers.hookspecs import hookimpl
from ltxv2_diffusers.training import checkpoints as ckpt
from ltxv2_diffusers.training.logging import read_metrics

pytestmark = pytest.mark.slow


class NanGradient:
    """A real plugin adding sqrt(0 * prediction) on chosen calls: the loss stays finite (0), its gradient
    is 0 * inf = NaN, the case clipping used to be the only guard against."""

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    @hookimpl
    def ltxv2_extra_losses(self, outputs):
        self.calls += 1
        zero = outputs["video"].pred.sum() * 0.0
        return [("nan_grad", torch.sqrt(zero) if self.calls in self.bad_calls else zero)]


def _finite_lora(path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values())


def test_nan_gradient_with_finite_loss_is_skipped_without_clipping(tiny_train, tmp_path, capsys):
    """Case 1: --max_grad_norm 0 and a NaN gradient behind a finite loss: the step is skipped naming its items
    (case 9), the LoRA stays finite."""
    _ws, argv = tiny_train
    plugins.register_plugin(NanGradient({2}), name="nan_grad")
    try:
        assert main(argv(tmp_path, 3, "--max_grad_norm", "0")) == 0
    finally:
        plugins.unregister_plugin("nan_grad")
    assert re.search(r"step 2: non-finite loss or gradient \(\d[\d.]*\); step skipped \(items: clip\d\d_",
                     capsys.readouterr().out)  # a finite loss, and the items of the step named
    metrics = list(read_metrics(tmp_path / "logs" / "metrics.jsonl"))
    assert [m["skipped"] for m in metrics] == [0.0, 1.0, 0.0]
    assert all(math.isfinite(m["loss"]) for m in metrics)  # the loss never showed it
    assert _finite_lora(tmp_path / "demo_lora.safetensors")


def test_weights_that_turn_nonfinite_are_never_saved(tiny_train, tmp_path, capsys):
    """Case 1: an update that overflows the LoRA (finite loss, absurd learning rate): no checkpoint and no final
    LoRA are written, the run exits 1 saying so."""
    _ws, argv = tiny_train
    code = main(argv(tmp_path, 3, "--learning_rate", "1e39", "--save_every_n_steps", "1", "--max_nonfinite_steps", "9"))
    err = capsys.readouterr().err
    assert code == 1 and "NaN/inf" in err and "Last good checkpoint: none saved yet" in err
    assert ckpt.CheckpointDir(tmp_path).all() == []
    assert not (tmp_path / "demo_lora.safetensors").exists()
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the refused save left nothing behind


def _good_run(argv, out, steps=4):
    """A short run saving every 2 steps (checkpoints step-2, step-4)."""
    assert main(argv(out, steps, "--save_every_n_steps", "2")) == 0
    return ckpt.CheckpointDir(out)


def test_network_weights_with_nan_alpha_is_refused(tiny_train, tmp_path, capsys):
    """Case 1: --network_weights whose alpha is NaN: exit 2 naming the file, before any training."""
    from ltxv2_diffusers.lora import lora_to_state_dict, read_lora

    _ws, argv = tiny_train
    assert main(argv(tmp_path / "a", 1)) == 0
    tensors, meta = lora_to_state_dict(read_lora(tmp_path / "a" / "demo_lora.safetensors"), "musubi")
    first_alpha = next(k for k in tensors if k.endswith(".alpha"))
    tensors[first_alpha] = torch.tensor(float("nan"))
    bad = tmp_path / "nan_alpha.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    assert main(argv(tmp_path / "b", 2, "--network_weights", str(bad))) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "alpha is nan" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "demo_lora.safetensors").exists()


class Evil:
    """What a hostile pickle does: `__reduce__` makes unpickling call a function of its choice."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _as_legacy(folder, payload):
    """Turn a checkpoint into the pre-safetensors layout: `optimizer_and_rng.pt`, no file manifest."""
    (folder / ckpt.OPTIMIZER_FILE).unlink()
    torch.save(payload, folder / ckpt.LEGACY_OPTIMIZER_FILE)
    state = json.loads((folder / ckpt.STATE_FILE).read_text())
    state.pop("files")
    (folder / ckpt.STATE_FILE).write_text(json.dumps(state))


def test_resume_never_runs_code_from_a_checkpoint(tiny_train, tmp_path, capsys, caplog):
    """Case 2: a pickled optimizer file with a `__reduce__` payload is refused, naming it; nothing runs. A real
    old-layout checkpoint still resumes (read with weights_only=True, with a warning)."""
    _ws, argv = tiny_train
    out = tmp_path / "run"
    checkpoints = _good_run(argv, out)
    assert not list(out.rglob("*.pt")) and (checkpoints.latest() / ckpt.OPTIMIZER_FILE).is_file()  # no pickle written
    step2, step4 = [path for _step, path in checkpoints.all()]
    from ltxv2_diffusers.training.safe_state import load_state

    _as_legacy(step2, load_state(step2 / ckpt.OPTIMIZER_FILE))  # a genuine old checkpoint
    marker = tmp_path / "pwned"
    _as_legacy(step4, {"optimizer": Evil(marker)})
    capsys.readouterr()
    assert main(argv(out, 5, "--save_every_n_steps", "2", "--resume", str(step4))) == 2
    err = capsys.readouterr().err
    assert not marker.exists(), "code from the checkpoint ran"
    assert str(step4 / ckpt.LEGACY_OPTIMIZER_FILE) in err and "weights_only=True" in err
    with caplog.at_level("WARNING"):
        assert main(argv(out, 5, "--save_every_n_steps", "2", "--resume", "latest")) == 0  # falls back to step-2
    assert not marker.exists() and f"resumed from {step2} at step 2" in capsys.readouterr().out
    assert "read with torch.load(weights_only=True)" in caplog.text


@pytest.mark.parametrize("damage", ["truncated_lora", "empty_lora", "no_optimizer", "broken_json", "flipped_byte"])
def test_damaged_latest_checkpoint_falls_back(damage, tiny_train, tmp_path, tmp_path_factory, caplog):
    """Case 6: each kind of damage to the newest checkpoint: `--resume latest` names the file and takes the
    previous intact one; an explicit `--resume` of the damaged one is an error naming it."""
    _ws, argv = tiny_train
    source = tmp_path_factory.getbasetemp() / "reliability_two_checkpoints"
    if not source.exists():
        _good_run(argv, source)
    out = tmp_path / "run"
    shutil.copytree(source / "checkpoints", out / "checkpoints")
    step2, step4 = [path for _step, path in ckpt.CheckpointDir(out).all()]
    lora = step4 / "trainable.safetensors"
    if damage == "truncated_lora":
        lora.write_bytes(lora.read_bytes()[:-100])
    elif damage == "empty_lora":
        lora.write_bytes(b"")
    elif damage == "no_optimizer":
        (step4 / ckpt.OPTIMIZER_FILE).unlink()
    elif damage == "broken_json":
        (step4 / ckpt.STATE_FILE).write_text('{"progress": {"global_st')
    else:
        opt = step4 / ckpt.OPTIMIZER_FILE
        data = bytearray(opt.read_bytes())
        data[-5] ^= 0xFF
        opt.write_bytes(bytes(data))
    with caplog.at_level("WARNING"):
        assert ckpt.resolve_resume("latest", out) == step2
    assert f"skipping damaged checkpoint {step4}" in caplog.text
    with pytest.raises(ValueError, match=f"--resume {step4}: damaged checkpoint: {step4}"):
        ckpt.resolve_resume(str(step4), out)


def test_resume_from_fallback_with_a_half_written_metrics_line(tiny_train, tmp_path, capsys):
    """Case 6: a killed run's truncated last checkpoint and half-written metrics line: the resume continues
    from the intact checkpoint, the metrics file ends up with each step once."""
    _ws, argv = tiny_train
    out = tmp_path / "run"
    checkpoints = _good_run(argv, out)
    latest = checkpoints.latest()
    (latest / "trainable.safetensors").write_bytes(b"")
    metrics = out / "logs" / "metrics.jsonl"
    with open(metrics, "a") as handle:
        handle.write('{"step": 5, "loss": 0.1')  # cut mid-line
    assert [m["step"] for m in read_metrics(metrics)] == [1, 2, 3, 4]  # readers skip it too
    assert main(argv(out, 4, "--save_every_n_steps", "2", "--resume", "latest")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [m["step"] for m in read_metrics(metrics)] == [1, 2, 3, 4]


def test_resume_with_changed_flags(tiny_train, tmp_path, capsys, caplog):
    """Case 7: rank, learning rate, schedule, seed, accumulation changed on resume: exit 2 listing old -> new
    before the model loads; --resume_override accepts a change on purpose; changed items are reported."""
    _ws, argv = tiny_train
    out = tmp_path / "run"
    checkpoints = _good_run(argv, out)
    step = str(checkpoints.latest())
    resume = ["--save_every_n_steps", "2", "--resume", step]
    for flags, expected in [(["--network_dim", "8"], "--network_dim 4 -> 8"),
                            (["--learning_rate", "5e-4"], "--learning_rate 0.001 -> 0.0005"),
                            (["--lr_scheduler", "cosine"], "--lr_scheduler 'constant' -> 'cosine'"),
                            (["--seed", "7"], "--seed 0 -> 7"),
                            (["--gradient_accumulation_steps", "2"], "--gradient_accumulation_steps 1 -> 2")]:
        assert main(argv(out, 5, *resume, *flags)) == 2
        err = capsys.readouterr().err
        assert expected in err and f"--resume_override {flags[0][2:]}" in err, err
    state = json.loads((checkpoints.latest() / ckpt.STATE_FILE).read_text())
    state["items"] = state["items"] + ["clip_gone_00000-009"]  # an item the dataset no longer has
    (checkpoints.latest() / ckpt.STATE_FILE).write_text(json.dumps(state))
    with caplog.at_level("WARNING"):
        assert main(argv(out, 5, *resume, "--learning_rate", "5e-4", "--resume_override", "learning_rate")) == 0
    assert "--learning_rate changes from 0.001 to 0.0005 (accepted by --resume_override)" in caplog.text
    assert "1 item(s) removed (e.g. ['clip_gone_00000-009'])" in caplog.text


def test_a_second_run_in_the_same_output_dir_is_refused(tiny_train, tmp_path, capsys, caplog):
    """Case 5: while a run holds --output_dir, another fails at once naming its PID and touches nothing (not
    even the first run's checkpoint being written); a lock left by a dead run is taken over."""
    _ws, argv = tiny_train
    out = tmp_path / "run"
    in_progress = out / "checkpoints" / ".tmp-step-00000002-123"
    in_progress.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from ltxv2_diffusers.training.run_lock import OutputDirLock; "
         "lock = OutputDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        assert main(argv(out, 1)) == 1
        assert time.monotonic() - started < 20  # refused before any model loads
        err = capsys.readouterr().err
        assert f"in use by another run (PID {holder.pid} on" in err
        assert in_progress.is_dir() and not (out / "logs" / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    with caplog.at_level("WARNING"):
        assert main(argv(out, 1)) == 0  # the holder died: its lock is taken over, its leftovers removed
    assert f"(PID {holder.pid} on" in caplog.text and "taking over" in caplog.text
    assert not in_progress.exists()


def test_restart_from_scratch_starts_fresh_metrics(tiny_train, tmp_path):
    """Case 12: a run started again without --resume logs only its own steps. Case 11: the temp files a kill
    during the final LoRA save left are removed."""
    _ws, argv = tiny_train
    assert main(argv(tmp_path, 2)) == 0
    leftovers = [tmp_path / ".demo_lora.safetensors.k1ll3d.tmp",
                 tmp_path / "demo_lora-diffusers" / ".pytorch_lora_weights.safetensors.k1ll3d.tmp"]
    for path in leftovers:
        path.write_bytes(b"half a LoRA")
    assert main(argv(tmp_path, 1)) == 0
    assert [m["step"] for m in read_metrics(tmp_path / "logs" / "metrics.jsonl")] == [1]
    assert not any(path.exists() for path in leftovers)


def test_disk_full_names_the_path(tiny_train, tmp_path, capsys):
    """Case 12: a write that fails with ENOSPC (metrics.jsonl on /dev/full) ends with one line naming the file
    and the cause, exit 1."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    _ws, argv = tiny_train
    (tmp_path / "logs").mkdir()
    os.symlink("/dev/full", tmp_path / "logs" / "metrics.jsonl")
    assert main(argv(tmp_path, 1)) == 1
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'logs' / 'metrics.jsonl'}: the disk is full" in err and "Traceback" not in err
