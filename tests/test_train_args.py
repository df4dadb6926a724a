"""Training flags: every old musubi flag accepted, config file + overrides, validation before model load."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import base_argv
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.timesteps import TimestepFormat
from ltxv2_diffusers.training.args import FLAGS, parse_args

# The old musubi LTX-2 training command, every flag of it.
MUSUBI_FLAGS = [
    "--ltx_mode", "--ltxv2_audio_video", "--ltxv2_backend", "--ltxv2_model", "--vae", "--text_encoder",
    "--text_encoder_backend", "--tokenizer", "--max_length", "--ltxv2_timestep_format", "--network_module",
    "--network_dim", "--network_alpha", "--sample_prompts", "--video_loss_weight", "--audio_loss_weight",
    "--dataset_config",
]


def test_every_musubi_flag_exists():
    names = {f.name for f in FLAGS} | {a for f in FLAGS for a in f.aliases}
    assert not [flag for flag in MUSUBI_FLAGS if flag not in names]


def test_old_musubi_command_parses(files, tmp_path):
    dataset, model, prompts = files
    args = parse_args([
        "--dataset_config", str(dataset), "--ltxv2_audio_video", "--ltxv2_backend", "official",
        "--ltxv2_model", str(model), "--vae", str(model), "--text_encoder", "google/gemma-3-12b-it",
        "--text_encoder_backend", "gemma", "--tokenizer", "google/gemma-3-12b-it", "--max_length", "1024",
        "--ltxv2_timestep_format", "flowmatch_1_1000", "--network_module", "musubi_tuner.networks.lora_ltxv2",
        "--network_dim", "16", "--network_alpha", "8", "--sample_prompts", str(prompts),
        "--video_loss_weight", "1.0", "--audio_loss_weight", "0.5", "--output_dir", str(tmp_path / "o"),
    ])
    assert args.mode is LtxMode.AV
    assert args.timestep_format is TimestepFormat.FLOWMATCH_1_1000
    assert args.network_module == "ltxv2_diffusers.lora"  # alias resolved
    assert (args.network_dim, args.network_alpha, args.audio_loss_weight) == (16, 8.0, 0.5)


def test_config_file_with_flag_override(files, tmp_path):
    dataset, model, _ = files
    config = tmp_path / "train.toml"
    config.write_text(
        f'dataset_config = "{dataset}"\nltxv2_model = "{model}"\nltxv2_timestep_format = "sd3_0_1"\n'
        f'output_dir = "{tmp_path / "o"}"\n[optim]\nlearning_rate = 3e-4\nnetwork_dim = 4\n'
        'gradient_checkpointing = true\nnetwork_args = ["include_ff=True"]\n')
    args = parse_args(["--config_file", str(config), "--network_dim", "8"])
    assert args.learning_rate == 3e-4 and args.network_dim == 8 and args.gradient_checkpointing
    assert args.network_args == ["include_ff=True"]
    assert args.timestep_format is TimestepFormat.SD3_0_1


def test_config_file_unknown_key_names_file(files, tmp_path, capsys):
    config = tmp_path / "train.toml"
    config.write_text("learning_rat = 1e-4\n")
    with pytest.raises(SystemExit) as exc:
        parse_args(["--config_file", str(config)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "train.toml" in err and "learning_rat" in err


@pytest.mark.parametrize("extra, message", [
    (["--ltx_mode", "video", "--ltxv2_audio_video"], "contradicts --ltx_mode video"),
    (["--network_module", "networks.lora"], "--network_module 'networks.lora' is not supported"),
    (["--optimizer_type", "AdamW8bit"], "bitsandbytes"),
    (["--save_last_n_steps", "10"], "--save_last_n_steps needs"),
    (["--sample_every_n_steps", "10"], "need --sample_prompts"),
    (["--push_to_hub"], "--hub_model_id"),
    (["--resume", "/nonexistent/state"], "--resume /nonexistent/state"),
    (["--resume_override", "learning_rate"], "--resume_override needs --resume"),
    (["--weighting_scheme", "nope"], "--weighting_scheme 'nope' is not registered"),
    (["--network_args", "include_ff"], "expected key=value"),
    (["--network_args", "includ_ff=True"], "--network_args includ_ff: not understood"),
    (["--text_encoder_backend", "clip"], "--text_encoder_backend 'clip' is not registered"),
    (["--ltx_mode", "av", "--video_loss_weight", "0", "--audio_loss_weight", "0"], "nothing to train"),
    (["--memory_budget", "lots"], "--memory_budget must be 'auto', 'off' or a number of GiB"),
    (["--memory_budget", "-4"], "--memory_budget must be 'auto', 'off' or a number of GiB"),
])
def test_wrong_flags_fail_fast(files, tmp_path, capsys, extra, message):
    if "bitsandbytes" in message:
        pytest.importorskip("pytest")  # always present; the check itself skips when bnb is installed
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is not None:
            pytest.skip("bitsandbytes installed")
    with pytest.raises(SystemExit):
        parse_args(base_argv(files, tmp_path, *extra))
    assert message in capsys.readouterr().err


def test_missing_timestep_format_lists_choices(files, tmp_path, capsys):
    dataset, model, _ = files
    with pytest.raises(SystemExit):
        parse_args(["--dataset_config", str(dataset), "--ltxv2_model", str(model), "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "flowmatch_1_1000" in err and "legacy_0_1000" in err and "sd3_0_1" in err


def test_unknown_flag_is_error(files, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(base_argv(files, tmp_path, "--not_a_flag", "1"))
    assert "unrecognized arguments: --not_a_flag" in capsys.readouterr().err


def test_cli_fails_before_loading_a_model(tmp_path):
    """A wrong command exits 2 quickly through the real script, never touching the (bogus) model file."""
    model = tmp_path / "broken.safetensors"
    model.write_bytes(b"not a checkpoint")
    script = Path(__file__).resolve().parents[1] / "train_ltxv2_lora.py"
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), "--dataset_config", str(tmp_path / "none.toml"),
                           "--ltxv2_model", str(model), "--output_dir", str(tmp_path / "o"),
                           "--ltxv2_timestep_format", "flowmatch_1_1000"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--dataset_config" in proc.stderr and "no such file" in proc.stderr
    assert time.perf_counter() - start < 60


def test_list_plugins_alone(capsys):
    from ltxv2_diffusers.cli.train import main

    assert main(["--list_plugins"]) == 0
    out = capsys.readouterr().out
    assert "default.weighting" in out and "register_weighting_schemes" in out


def test_examples_parse():
    from ltxv2_diffusers.training.args import build_parser, load_config_file
    from ltxv2_diffusers.data.prompts import load_prompts

    examples = Path(__file__).resolve().parents[1] / "examples"
    values = load_config_file(examples / "train_av.toml", build_parser())
    assert values["ltx_mode"] == "av" and values["network_dim"] == 16 and values["gradient_checkpointing"] is True
    prompts = load_prompts(examples / "prompts.txt")
    assert len(prompts) == 2 and prompts[0].negative_prompt == "worst quality, blurry"


def test_missing_caches_fail_before_the_model_loads(tmp_path, capsys):
    """No caches yet: one error line names the cache command (exit 2); the (bogus) model file is never opened."""
    from ltxv2_diffusers.cli.train import main
    from ltxv2_diffusers.data.synthetic import make_dataset

    dataset = make_dataset(tmp_path / "data", num_videos=1, num_frames=9, size=(64, 64), resolution=(64, 64),
                           target_frames=(9,))
    model = tmp_path / "broken.safetensors"
    model.write_bytes(b"not a checkpoint")
    argv = ["--dataset_config", str(dataset), "--ltxv2_model", str(model), "--ltx_mode", "video",
            "--ltxv2_timestep_format", "flowmatch_1_1000", "--output_dir", str(tmp_path / "o"), "--log_with", "none"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "ltxv2-cache-latents" in err and "Traceback" not in err
    assert main(argv + ["--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err  # --debug shows where it came from
    config = tmp_path / "run.toml"
    config.write_text("debug = true\n")
    assert main(argv + ["--config_file", str(config)]) == 2
    assert "Traceback" in capsys.readouterr().err  # from the config file too


def test_config_file_plugins_apply_before_plugin_flags(files, tmp_path, capsys):
    """`plugins = "-default.weighting"` in the config file applies before the parser is built."""
    from ltxv2_diffusers import plugins

    dataset, model, _ = files
    config = tmp_path / "train.toml"
    config.write_text(f'plugins = "-default.weighting"\ndataset_config = "{dataset}"\nltxv2_model = "{model}"\n'
                      f'ltxv2_timestep_format = "sd3_0_1"\noutput_dir = "{tmp_path / "o"}"\n')
    try:
        with pytest.raises(SystemExit):  # the built-in schemes are blocked: 'none' is not registered
            parse_args(["--config_file", str(config)])
        assert "--weighting_scheme 'none' is not registered" in capsys.readouterr().err
    finally:
        plugins.configure(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without CUDA")
@pytest.mark.parametrize("extra", [["--low_memory"], ["--offload_optimizer"],
                                   ["--blocks_without_recompute", "4"]])
def test_gpu_only_memory_levers_need_cuda(files, tmp_path, capsys, extra):
    with pytest.raises(SystemExit):
        parse_args(base_argv(files, tmp_path, "--gradient_checkpointing", *extra))
    assert "need a CUDA device and none is available" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--recompute", "checkpoint"], "unrecognized arguments"),  # a benchmark option (benchmarks/train_step.py)
    (["--blocks_without_recompute", "4"], "needs --gradient_checkpointing and --recompute compiled"),
    (["--gradient_checkpointing", "--low_memory", "--blocks_without_recompute", "4"], "without --no_compile, --low_memory"),
    (["--gradient_checkpointing", "--blocks_without_recompute", "0"], None),
    (["--memory_budget", "16"], None),
    (["--memory_budget", "off"], None),
])
def test_recompute_flags_are_checked(files, tmp_path, capsys, extra, message):
    if message is None:  # 0 means "off", like the other counts; budgets are the planner's (CUDA only)
        args = parse_args(base_argv(files, tmp_path, *extra))
        assert args.blocks_without_recompute in (None, 0)
        return
    with pytest.raises(SystemExit):
        parse_args(base_argv(files, tmp_path, *extra))
    assert message in capsys.readouterr().err


def test_speed_options_refuse_weight_streaming_off_cuda():
    from ltxv2_diffusers.speed.setup import SpeedOptions

    assert any("need a CUDA device" in p for p in SpeedOptions.for_device("cpu", low_memory=True).problems())
    assert SpeedOptions.for_device("cpu").naive and not SpeedOptions.for_device("cpu").problems()


def test_text_cache_of_the_wrong_layout_fails_before_the_model_loads(tmp_path):
    """A video-only text cache in av mode is reported from the checkpoint's config alone."""
    import argparse

    from ltxv2_diffusers.data.stores import CacheStore, tensor_to_columns
    from ltxv2_diffusers.data.synthetic import make_dataset
    from ltxv2_diffusers.models.loading import read_transformer_config, save_official_checkpoint
    from ltxv2_diffusers.models.presets import build_components
    from ltxv2_diffusers.modes import LtxMode
    from ltxv2_diffusers.training.data import TrainData, model_text_widths

    dataset = make_dataset(tmp_path / "data", num_videos=1, num_frames=9, size=(64, 64), resolution=(64, 64),
                           target_frames=(9,))
    from ltxv2_diffusers.data.config import load_dataset_config

    cache = load_dataset_config(dataset).datasets[0].cache_directory
    row = {"key": "x", "fingerprint": "t", "source": "x"}
    CacheStore(cache, "video").write_shard([{**row, **tensor_to_columns("latents", torch.zeros(128, 2, 2, 2)),
                                             "fps": 24.0, "width": 64, "height": 64, "num_frames": 9}])
    CacheStore(cache, "audio").write_shard([{**row, **tensor_to_columns("audio_latents", torch.zeros(8, 5, 16)),
                                             "audio_lengths": 5, "sample_rate": 16000, "width": 64, "height": 64}])
    CacheStore(cache, "text").write_shard([{**row, **tensor_to_columns("text", torch.zeros(6, 24)),
                                            **tensor_to_columns("text_mask", torch.ones(6, dtype=torch.bool)),
                                            "caption": "x"}])
    model = save_official_checkpoint(tmp_path / "tiny.safetensors",
                                     **build_components("tiny", components=("transformer", "connectors")))
    assert read_transformer_config(model)["caption_channels"] == 24
    args = argparse.Namespace(dataset_config=str(dataset), mode=LtxMode.AV, seed=0, ltxv2_model=str(model),
                              ltxv2_backend=None)
    assert model_text_widths(args) == (24, 24)
    with pytest.raises(ValueError, match="video-only layout.*--ltxv2_audio_video"):
        TrainData(args)
    args.mode = LtxMode.VIDEO
    assert TrainData(args).batches_per_epoch() == 1
    args.ltxv2_model = str(tmp_path / "nothing_here.safetensors")
    assert model_text_widths(args) is None  # the model loader reports a bad --ltxv2_model itself
