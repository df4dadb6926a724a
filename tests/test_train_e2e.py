"""End to end through a real `accelerate launch`: one process, two processes (gloo), an installed plugin."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import (
    REPO, STEPS, accelerate_launch, baseline_argv, baseline_run, lora_tensors, workspace,
)
from ltxv2_diffusers.training.logging import read_metrics

pytestmark = pytest.mark.slow


def test_single_process_run_writes_everything(tmp_path_factory):
    out = baseline_run(tmp_path_factory)
    official = lora_tensors(out / "demo_lora.safetensors")
    diffusers = lora_tensors(out / "demo_lora-diffusers" / "pytorch_lora_weights.safetensors")
    assert official and all(k.startswith("diffusion_model.") for k in official)
    assert diffusers and all(k.startswith("transformer.") for k in diffusers)
    assert any("audio" in k for k in official) and any("audio" not in k for k in official)  # av trains both
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step-00000002", "step-00000004",
                                                                         "step-00000006"]
    metrics = list(read_metrics(out / "logs" / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for m in metrics:
        assert m["loss"] == pytest.approx(m["loss/video"] + m["loss/audio"], rel=1e-5)
        assert 0 < m["step_time"] < 600
    assert metrics[0]["lr"] < metrics[2]["lr"]  # linear warm-up over 2 steps
    assert (out / "loss.png").stat().st_size > 0


def test_two_processes_equal_one_process(tmp_path_factory, tmp_path):
    """Global batch 2: two gloo processes with `batch_size = 1` each (per process, as in musubi) train
    the same LoRA as one process with `batch_size = 2`."""
    ws = workspace(tmp_path_factory)
    single = baseline_run(tmp_path_factory)
    per_process = ws.dataset_config.with_name("dataset_per_process.toml")
    text = ws.dataset_config.read_text(encoding="utf-8")
    assert "batch_size = 2" in text
    per_process.write_text(text.replace("batch_size = 2", "batch_size = 1"), encoding="utf-8")
    accelerate_launch(baseline_argv(ws, tmp_path, extra=["--dataset_config", str(per_process)]), num_processes=2)
    a, b = lora_tensors(single / "demo_lora.safetensors"), lora_tensors(tmp_path / "demo_lora.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    la = [m["loss"] for m in read_metrics(single / "logs" / "metrics.jsonl")]
    lb = [m["loss"] for m in read_metrics(tmp_path / "logs" / "metrics.jsonl")]
    assert lb == pytest.approx(la, rel=1e-4)


def _install_plugin(tmp_path) -> Path:
    """pip-install a copy of plugins/ltxv2-audio-delta-loss into a private folder (never the shared
    environment, never building inside the checkout)."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "plugins" / "ltxv2-audio-delta-loss", src,
                    ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
                    "--disable-pip-version-check", "--target", str(site), str(src)], check=True, capture_output=True)
    return site


@pytest.fixture()
def installed_plugin(tmp_path, monkeypatch):
    from ltxv2_diffusers import plugins

    site = _install_plugin(tmp_path)
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("ltxv2_audio_delta_loss", None)
    importlib.invalidate_caches()
    plugins.configure(None)


def test_installed_plugin_changes_training_loss(tmp_path_factory, tmp_path, installed_plugin, capsys):
    """The first-party audio-delta plugin, pip-installed and found through its entry point, adds its term
    to the loss of a real run; blocking it with --plugins restores the baseline loss exactly."""
    from ltxv2_diffusers.cli.train import main

    ws = workspace(tmp_path_factory)

    def first_step(out, *extra):
        assert main(baseline_argv(ws, out, steps=1, extra=extra)) == 0
        return next(read_metrics(out / "logs" / "metrics.jsonl"))

    assert main(["--list_plugins"]) == 0
    assert "audio_delta_loss" in capsys.readouterr().out
    with_plugin = first_step(tmp_path / "with", "--audio_delta_loss_weight", "0.5")
    blocked = first_step(tmp_path / "blocked", "--plugins=-audio_delta_loss")
    baseline = next(read_metrics(baseline_run(tmp_path_factory) / "logs" / "metrics.jsonl"))
    assert blocked["loss"] == baseline["loss"] and "loss/audio_delta" not in blocked
    assert with_plugin["loss/video"] == baseline["loss/video"] and with_plugin["loss/audio"] == baseline["loss/audio"]
    assert with_plugin["loss/audio_delta"] > 0
    assert with_plugin["loss"] == pytest.approx(baseline["loss"] + with_plugin["loss/audio_delta"], rel=1e-6)
