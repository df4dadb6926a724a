"""`ltxv2-demo`: the whole offline workflow (model, Gemma, clips, three caches, av training, preview)."""

from __future__ import annotations

import av
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_offline_end_to_end(tmp_path, capsys):
    from ltxv2_diffusers.cli.demo import main

    assert main(["--output_dir", str(tmp_path), "--steps", "4", "--clips", "2"]) == 0
    out = capsys.readouterr().out
    lora = tmp_path / "output" / "demo_lora.safetensors"
    previews = sorted((tmp_path / "output" / "samples").glob("*.mp4"))
    assert lora.is_file() and (tmp_path / "output" / "demo_lora-diffusers" / "pytorch_lora_weights.safetensors").is_file()
    assert str(lora) in out and "preview (mp4 with audio)" in out
    assert previews and str(previews[-1]) in out
    with av.open(str(previews[-1])) as container:
        assert sorted(s.type for s in container.streams) == ["audio", "video"]
    for path in ("model/ltx-2-tiny.safetensors", "gemma-3-tiny/config.json", "data/dataset.toml", "prompts.txt",
                 "output/loss.png"):
        assert (tmp_path / path).exists(), path
    assert "ltxv2-cache-latents" in out and "ltxv2-cache-audio-latents" in out and "ltxv2-cache-text-encoder-outputs" in out


def test_demo_workspace_can_have_more_blocks(tmp_path):
    """`benchmarks/trainer_gpu_check.py` trains a five-block demo model so that blocks can be swapped."""
    from ltxv2_diffusers.cli.demo import write_workspace
    from ltxv2_diffusers.models.loading import load_components

    ws = write_workspace(tmp_path, num_clips=1, num_layers=5)
    transformer = load_components(str(ws.model), components=["transformer"])["transformer"]
    assert len(transformer.transformer_blocks) == 5
