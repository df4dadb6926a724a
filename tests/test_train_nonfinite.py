"""Non-finite losses: a step is skipped and reported; repeated ones stop the run with the last good checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from test_train_workspace import baseline_argv, workspace
from ltxv2_diffusers import plugins
from ltxv2_diffusers.hookspecs import hookimpl
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.checkpoints import CheckpointDir
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.trainer import Trainer, TrainingDiverged

pytestmark = pytest.mark.slow


class PoisonSteps:
    """A real plugin whose extra loss is NaN on chosen calls (one call per step without accumulation)."""

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    @hookimpl
    def ltxv2_extra_losses(self, outputs):
        self.calls += 1
        value = float("nan") if self.calls in self.bad_calls else 0.0
        return [("poison", outputs["video"].pred.sum() * 0.0 + value)]


@pytest.fixture()
def poison():
    created = []

    def register(bad_calls):
        plugin = PoisonSteps(bad_calls)
        plugins.register_plugin(plugin, name="poison")
        created.append(plugin)
        return plugin

    yield register
    if created:
        plugins.unregister_plugin("poison")


def test_single_nonfinite_step_is_skipped(tmp_path_factory, tmp_path, poison, capsys):
    ws = workspace(tmp_path_factory)
    args = parse_args(baseline_argv(ws, tmp_path, steps=4, extra=["--gradient_accumulation_steps", "1"]))
    poison({2})
    Trainer(args).run()
    metrics = list(read_metrics(tmp_path / "logs" / "metrics.jsonl"))
    assert [m["skipped"] for m in metrics] == [0.0, 1.0, 0.0, 0.0]
    assert "step 2: non-finite loss" in capsys.readouterr().out
    lora = (tmp_path / "demo_lora.safetensors")
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(str(lora)).values())
    assert math.isfinite(metrics[-1]["loss"])


def test_repeated_nonfinite_steps_stop_and_keep_last_good_checkpoint(tmp_path_factory, tmp_path, poison):
    ws = workspace(tmp_path_factory)
    args = parse_args(baseline_argv(ws, tmp_path, steps=6, extra=["--max_nonfinite_steps", "2", "--gradient_accumulation_steps", "1"]))
    poison({3, 4, 5, 6})
    with pytest.raises(TrainingDiverged, match=r"2 non-finite losses in a row \(steps \[3, 4\]\).*step-00000002"):
        Trainer(args).run()
    assert [step for step, _ in CheckpointDir(tmp_path).all()] == [2]
    assert not (tmp_path / "demo_lora.safetensors").exists()
