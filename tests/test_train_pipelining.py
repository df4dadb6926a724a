"""The trainer reads each step's verdict and logs one step late, once the next step is queued, so the host
never waits for the device between steps. That must change nothing but when the host learns: the same
LoRA, losses, learning rates and skipped steps as finishing every step at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import PoisonSteps
from conftest import baseline_argv, workspace
from ltxv2_diffusers import plugins
from ltxv2_diffusers.hookspecs import hookimpl
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.trainer import Trainer

pytestmark = pytest.mark.slow


class MetricsAtEachBatch:
    """A real plugin noting, whenever the trainer starts a step's batch, how many steps metrics.jsonl holds."""

    def __init__(self, path: Path):
        self.path, self.seen = path, []

    @hookimpl
    def ltxv2_transform_batch(self, batch, args):
        self.seen.append(len(list(read_metrics(self.path))) if self.path.is_file() else 0)
        return None


class StepEnd:
    """A real `on_step_end` plugin: each step must be finished before it is called."""

    def __init__(self):
        self.steps = []

    @hookimpl
    def ltxv2_on_step_end(self, step, logs):
        self.steps.append(step)


def _train(ws, out: Path, extra_plugins=()):
    """Five steps with a NaN in step 3, no saves but the final one; returns (seen counts, metrics, LoRA)."""
    args = parse_args(baseline_argv(ws, out, steps=5, extra=["--gradient_accumulation_steps", "1",
                                                            "--save_every_n_steps", "100"]))
    recorder = MetricsAtEachBatch(out / "logs" / "metrics.jsonl")
    added = {"poison": PoisonSteps({3}), "recorder": recorder, **dict(extra_plugins)}
    for name, plugin in added.items():
        plugins.register_plugin(plugin, name=name)
    try:
        Trainer(args).run()
    finally:
        for name in added:
            plugins.unregister_plugin(name)
    metrics = list(read_metrics(out / "logs" / "metrics.jsonl"))
    return recorder.seen, metrics, load_file(str(out / "demo_lora.safetensors"))


def test_reading_steps_one_late_changes_nothing_but_when(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    late_seen, late, late_lora = _train(ws, tmp_path / "late")
    step_end = StepEnd()
    now_seen, now, now_lora = _train(ws, tmp_path / "now", [("step_end", step_end)])

    # Step k's batch starts before step k-1 is read; with an on_step_end plugin every step is read at once.
    assert late_seen == [0, 0, 1, 2, 3]
    assert now_seen == [0, 1, 2, 3, 4] and step_end.steps == [1, 2, 3, 4, 5]
    # Nothing else differs: the skipped step, the learning rates (warm-up, then linear decay, paused by the
    # skip), the losses and the LoRA, bit for bit.
    assert [m["step"] for m in late] == [1, 2, 3, 4, 5]
    assert [m["skipped"] for m in late] == [0.0, 0.0, 1.0, 0.0, 0.0]
    for key in ("loss", "lr", "skipped", "grad_norm"):
        assert [m.get(key) for m in late] == [m.get(key) for m in now], key
    assert late[2].get("grad_norm") is None and all(late[i]["grad_norm"] > 0 for i in (0, 1, 3, 4))
    assert len({m["lr"] for m in late}) >= 3
    assert late_lora.keys() == now_lora.keys()
    assert all(torch.equal(late_lora[k], now_lora[k]) for k in late_lora)


class FailAt:
    """A real plugin whose extra loss raises on one call, as any bug in a step would."""

    def __init__(self, call: int):
        self.call, self.calls = call, 0

    @hookimpl
    def ltxv2_extra_losses(self, outputs):
        self.calls += 1
        if self.calls == self.call:
            raise ValueError("broken plugin")
        return [("zero", outputs["video"].pred.sum() * 0.0)]


def test_a_step_read_late_is_still_logged_when_the_next_one_fails(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    args = parse_args(baseline_argv(ws, tmp_path, steps=5, extra=["--gradient_accumulation_steps", "1",
                                                                 "--save_every_n_steps", "100"]))
    plugins.register_plugin(FailAt(4), name="fail")
    try:
        with pytest.raises(plugins.PluginError, match="broken plugin"):
            Trainer(args).run()
    finally:
        plugins.unregister_plugin("fail")
    # step 3 was still waiting to be read when step 4 failed: its line is there all the same
    assert [m["step"] for m in read_metrics(tmp_path / "logs" / "metrics.jsonl")] == [1, 2, 3]
