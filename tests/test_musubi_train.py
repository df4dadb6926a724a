"""Training from a cache folder written the way musubi-tuner writes it, and musubi's documented LTX-2 LoRA
command, on the shared tiny workspace (test_train_workspace.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from conftest import REPO, SCRIPT, baseline_argv, musubi_loader_items, subprocess_env, workspace, write_like_musubi
from ltxv2_diffusers.data import musubi
from ltxv2_diffusers.data.stores import CacheStore
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.trainer import Trainer

pytestmark = pytest.mark.slow


def _with_statistics(model: Path, out: Path) -> Path:
    """A copy of the tiny checkpoint whose VAEs have non-trivial latent statistics (the tiny ones are
    identity), so normalized and raw latents differ."""
    import torch
    from safetensors.torch import load_file, save_file

    with safe_open(str(model), "pt") as f:
        metadata = f.metadata()
    state = load_file(str(model))
    g = torch.Generator().manual_seed(7)
    for prefix in ("vae", "audio_vae"):
        mean, std = f"{prefix}.per_channel_statistics.mean-of-means", f"{prefix}.per_channel_statistics.std-of-means"
        state[mean] = torch.randn(state[mean].shape, generator=g).to(state[mean].dtype)
        state[std] = (torch.rand(state[std].shape, generator=g) + 0.5).to(state[std].dtype)
    save_file(state, str(out), metadata=metadata)
    return out


def _musubi_copy(ws, model: Path, root: Path) -> Path:
    """The workspace's cached items rewritten as musubi's writers lay them out (latents normalized with
    `model`'s VAE statistics, `_ltx2` names, one text cache per video with its split prompt embeds), and a
    dataset.toml using them."""
    text = ws.dataset_config.read_text(encoding="utf-8")
    cache = Path(next(line.split('"')[1] for line in text.splitlines() if line.startswith("cache_directory")))
    out = root / "musubi_cache"
    stats = musubi.latent_stats_from_vae(str(model))
    assert not torch_allclose_identity(stats)
    video, audio, texts = (CacheStore(str(cache), k) for k in ("video", "audio", "text"))
    audio_rows = audio.index()
    for key, i in video.index().items():
        row, a = video.read(i), audio.read(audio_rows[key])
        t = texts.read(texts.index()[key])
        write_like_musubi(str(out), key, (row["width"], row["height"]), stats.normalize_video(row["latents"]),
                          fps=row["fps"], frame_count=row["num_frames"], audio=stats.normalize_audio(a["audio_latents"]),
                          audio_steps=int(a["audio_lengths"]), text=(t["text"], t["text_mask"], t["caption"]),
                          video_width=musubi.video_context_width(str(model)))
    assert len(musubi_loader_items(str(out))) == len(video.index())  # what musubi itself would train on
    config = root / "dataset_musubi.toml"
    config.write_text(text.replace(str(cache), str(out)), encoding="utf-8")
    return config


def torch_allclose_identity(stats) -> bool:
    return bool((stats.video_mean == 0).all() and (stats.video_std == 1).all())


def test_musubi_cache_folder_trains_with_the_same_first_step_loss(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    model = _with_statistics(ws.model, tmp_path / "ltx-2-tiny-stats.safetensors")
    config = _musubi_copy(ws, model, tmp_path)
    losses = {}
    same_model = ["--ltxv2_model", str(model), "--vae", str(model)]
    for name, extra in (("ours", same_model), ("musubi", same_model + ["--dataset_config", str(config)])):
        out = tmp_path / name
        Trainer(parse_args(baseline_argv(ws, out, steps=1, extra=extra))).run()
        losses[name] = [m["loss"] for m in read_metrics(out / "logs" / "metrics.jsonl")]
    assert len(losses["ours"]) == 1
    # Normalization round trip in fp32 (ours raw, musubi's normalized as its encoders return them).
    assert losses["musubi"] == pytest.approx(losses["ours"], rel=1e-5)


# musubi-tuner docs/ltx_2.md "Standard LoRA Training" (commit e0e570f), after its `ltx2_train_network.py`, in its
# documented LTX-2 (19B) variant (`--ltx_version 2.0`, the tiny model being an LTX-2.0). Paths are filled in;
# --max_train_steps 2000 becomes 10 (two epochs' saves and previews on a CPU).
MUSUBI_COMMAND = """
  --mixed_precision bf16 --dataset_config {dataset} --gemma_load_in_8bit --gemma_root {gemma}
  --separate_audio_buckets --ltx2_checkpoint {model} --ltx_version 2.0 --ltx_version_check_mode error
  --ltx2_mode av --fp8_base --fp8_scaled --blocks_to_swap 10 --sdpa --gradient_checkpointing
  --learning_rate 1e-4 --network_module networks.lora_ltx2 --network_dim 32 --network_alpha 32
  --timestep_sampling shifted_logit_normal --sample_at_first --sample_every_n_epochs 5
  --sample_prompts {prompts} --sample_with_offloading --sample_tiled_vae --sample_vae_tile_size 512
  --sample_vae_tile_overlap 64 --sample_vae_temporal_tile_size 48 --sample_vae_temporal_tile_overlap 8
  --sample_merge_audio --max_train_steps 10 --save_every_n_epochs 5 --save_last_n_epochs 5 --save_state
  --save_state_on_train_end --output_dir {output} --output_name ltx23_lora
"""


def test_musubis_documented_command_runs_here(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    argv = MUSUBI_COMMAND.format(dataset=ws.dataset_config, gemma=ws.text_encoder, model=ws.model,
                                 prompts=ws.prompts, output=tmp_path).split()
    args = parse_args(argv)
    assert args.mode.value == "av" and args.ltxv2_model == str(ws.model) and args.text_encoder == str(ws.text_encoder)
    assert args.timestep_format.value == "legacy_0_1000"  # musubi's own convention, t / 1000
    # As the docs launch it (`accelerate launch --num_cpu_threads_per_process 1 --mixed_precision bf16 ...`),
    # on this machine's CPU.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_cpu_threads_per_process", "1",
                "--mixed_precision", "bf16", "--num_machines", "1", "--num_processes", "1", "--cpu",
                "--dynamo_backend", "no"]
    proc = subprocess.run([*launcher, str(SCRIPT), *argv], capture_output=True, text=True, timeout=900,
                          env=subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for flag in ("--sdpa", "--sample_tiled_vae", "--gemma_load_in_8bit", "--separate_audio_buckets"):
        assert proc.stderr.count(f"{flag} is accepted for musubi-tuner commands and ignored") == 1
    lora = tmp_path / "ltx23_lora.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
    assert any("audio" in k for k in keys) and any("audio" not in k for k in keys)  # an av LoRA
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["step00000000_00.mp4", "step00000010_00.mp4"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000010"]
    assert (tmp_path / "checkpoints" / "step-00000010" / "training_state.json").is_file()
    assert [m["step"] for m in read_metrics(tmp_path / "logs" / "metrics.jsonl")] == list(range(1, 11))
    shutil.rmtree(tmp_path / "samples")


def test_export_cache_cli_writes_musubis_layout_and_reads_it_back(tmp_path_factory, tmp_path):
    import torch
    from safetensors.torch import load_file

    from ltxv2_diffusers.cli import export_cache

    ws = workspace(tmp_path_factory)
    model = _with_statistics(ws.model, tmp_path / "ltx-2-tiny-stats.safetensors")
    text = ws.dataset_config.read_text(encoding="utf-8")
    cache = next(line.split('"')[1] for line in text.splitlines() if line.startswith("cache_directory"))
    out, back = tmp_path / "musubi", tmp_path / "arrow"
    assert export_cache.main(["--format", "musubi", "--cache_directory", cache, "--output_directory", str(out)]) == 2
    assert export_cache.main(["--format", "musubi", "--cache_directory", cache, "--output_directory", str(out),
                              "--vae", str(model)]) == 0
    found = musubi_loader_items(str(out))
    video = CacheStore(cache, "video")
    assert sorted(found) == sorted(f"{k}_0064x0064_ltx2.safetensors" for k in video.index())
    stats, width = musubi.latent_stats_from_vae(str(model)), musubi.video_context_width(str(model))
    key = sorted(video.index())[0]
    raw = video.read(video.index()[key])["latents"]
    stored = next(iter(load_file(str(out / f"{key}_0064x0064_ltx2.safetensors")).values()))
    torch.testing.assert_close(stored, stats.normalize_video(raw))
    te = load_file(found[f"{key}_0064x0064_ltx2.safetensors"][0])
    assert te["video_prompt_embeds_float32"].shape[-1] == width < te["text_float32"].shape[-1]
    assert export_cache.main(["--format", "arrow", "--cache_directory", str(out), "--output_directory", str(back),
                              "--vae", str(model)]) == 0
    again = CacheStore(str(back), "video")
    torch.testing.assert_close(again.read(again.index()[key])["latents"], raw, rtol=1e-5, atol=1e-5)
