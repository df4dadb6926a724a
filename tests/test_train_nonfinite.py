"""Non-finite losses: a step is skipped and reported; repeated ones stop the run with the last good checkpoint.
Running out of GPU memory stops the run with advice instead of a traceback."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import PoisonSteps, baseline_argv, workspace
from ltxv2_diffusers import plugins
from ltxv2_diffusers.hookspecs import hookimpl
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.checkpoints import CheckpointDir
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.trainer import Trainer, TrainingDiverged, TrainingOutOfMemory

pytestmark = pytest.mark.slow


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


def test_a_nonfinite_micro_batch_skips_its_whole_accumulated_step(tmp_path_factory, tmp_path, poison):
    """With two micro-batches a step, a NaN in the second micro-batch of step 2 (call 4) skips step 2 only;
    the finiteness of all micro-batches is read once per step."""
    ws = workspace(tmp_path_factory)
    args = parse_args(baseline_argv(ws, tmp_path, steps=3, extra=["--gradient_accumulation_steps", "2"]))
    poison({4})
    Trainer(args).run()
    metrics = list(read_metrics(tmp_path / "logs" / "metrics.jsonl"))
    assert [m["skipped"] for m in metrics] == [0.0, 1.0, 0.0]
    assert math.isnan(float(metrics[1]["loss"])) and math.isfinite(metrics[2]["loss"])


def test_repeated_nonfinite_steps_stop_and_keep_last_good_checkpoint(tmp_path_factory, tmp_path, poison):
    ws = workspace(tmp_path_factory)
    args = parse_args(baseline_argv(ws, tmp_path, steps=6, extra=["--max_nonfinite_steps", "2", "--gradient_accumulation_steps", "1"]))
    poison({3, 4, 5, 6})
    with pytest.raises(TrainingDiverged, match=r"2 non-finite losses in a row \(steps \[3, 4\]\).*step-00000002"):
        Trainer(args).run()
    assert [step for step, _ in CheckpointDir(tmp_path).all()] == [2]
    assert not (tmp_path / "demo_lora.safetensors").exists()


class ExhaustMemory:
    """A real plugin whose extra loss runs out of memory on one call, the way a CUDA allocation fails
    inside a step (the trainer sees it wrapped in the plugin's error, as for any plugin)."""

    def __init__(self, bad_call):
        self.bad_call, self.calls = bad_call, 0

    @hookimpl
    def ltxv2_extra_losses(self, outputs):
        self.calls += 1
        if self.calls == self.bad_call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [("zero", outputs["video"].pred.sum() * 0.0)]


def test_out_of_memory_stops_with_advice_and_keeps_checkpoints(tmp_path_factory, tmp_path, capsys):
    from ltxv2_diffusers.cli.train import main

    ws = workspace(tmp_path_factory)
    argv = baseline_argv(ws, tmp_path, steps=4, extra=["--gradient_accumulation_steps", "1",
                                                      "--save_every_n_steps", "2"])
    plugins.register_plugin(ExhaustMemory(bad_call=3), name="exhaust")
    try:
        with pytest.raises(TrainingOutOfMemory, match=r"out of memory in step 3\. Use less: .*--blocks_to_swap N"
                                                      r".*--low_memory.*last good checkpoint: .*step-00000002"):
            Trainer(parse_args(argv)).run()
        assert [step for step, _ in CheckpointDir(tmp_path).all()] == [2]
        plugins.unregister_plugin("exhaust")
        plugins.register_plugin(ExhaustMemory(bad_call=1), name="exhaust")
        assert main(argv + ["--output_dir", str(tmp_path / "again")]) == 1
        assert "error: the GPU ran out of memory in step 1" in capsys.readouterr().err
    finally:
        plugins.unregister_plugin("exhaust")


def test_running_out_of_memory_saves_the_work_so_far_and_resume_continues_exactly(tmp_path_factory, tmp_path):
    """No checkpoints asked for: running out of memory in the second micro-batch of step 3 still saves steps
    1-2 (the failed step's gradients dropped, its batches given back), and `--resume latest` then ends with
    the LoRA of a run that never stopped."""
    from safetensors.torch import load_file

    ws = workspace(tmp_path_factory)

    def argv(out, *extra):
        a = baseline_argv(ws, out, steps=4, extra=["--gradient_accumulation_steps", "2", *extra])
        i = a.index("--save_every_n_steps")
        return a[:i] + a[i + 2:]

    whole = Trainer(parse_args(argv(tmp_path / "whole"))).run()
    plugins.register_plugin(ExhaustMemory(bad_call=6), name="exhaust")  # two calls per step: step 3's second
    try:
        with pytest.raises(TrainingOutOfMemory, match=r"out of memory in step 3\..*last good checkpoint: "
                                                      r".*step-00000002"):
            Trainer(parse_args(argv(tmp_path / "cut"))).run()
    finally:
        plugins.unregister_plugin("exhaust")
    assert [step for step, _ in CheckpointDir(tmp_path / "cut").all()] == [2]
    resumed = Trainer(parse_args(argv(tmp_path / "cut", "--resume", "latest"))).run()
    expected, got = load_file(str(whole)), load_file(str(resumed))
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-7, msg=key)
    steps = [m["step"] for m in read_metrics(tmp_path / "cut" / "logs" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
