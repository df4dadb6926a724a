"""Each mode trains what it says (video / av / audio LoRA keys, previews as mp4 or wav), and gradient
checkpointing changes nothing but memory."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from test_train_workspace import baseline_argv, workspace
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.trainer import Trainer

pytestmark = pytest.mark.slow


def _train(ws, out, *extra, steps=2):
    return Trainer(parse_args(baseline_argv(ws, out, steps=steps, extra=extra))).run()


@pytest.mark.parametrize("mode, preview", [("video", ".mp4"), ("audio", ".wav")])
def test_single_modality_modes(tmp_path_factory, tmp_path, mode, preview):
    ws = workspace(tmp_path_factory)
    lora = _train(ws, tmp_path, "--ltx_mode", mode, "--sample_prompts", str(ws.prompts), "--sample_every_n_steps", "2")
    keys = list(load_file(str(lora)))
    audio_keys = [k for k in keys if "audio" in k]
    if mode == "video":
        assert keys and not audio_keys  # no audio module, cross-modal ones included, is touched
    else:
        assert keys and len(audio_keys) == len(keys)
    metrics = list(read_metrics(tmp_path / "logs" / "metrics.jsonl"))
    term = {"video": "loss/video", "audio": "loss/audio"}[mode]
    assert all(term in m and m["loss"] == pytest.approx(m[term]) for m in metrics)
    files = sorted((tmp_path / "samples").iterdir())
    assert [f.suffix for f in files] == [preview] and files[0].stat().st_size > 0


def test_gradient_checkpointing_gives_the_same_lora(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    plain = load_file(str(_train(ws, tmp_path / "plain")))
    checkpointed = load_file(str(_train(ws, tmp_path / "ckpt", "--gradient_checkpointing")))
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-5, atol=1e-7)
