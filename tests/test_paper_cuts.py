"""What a newcomer hit on a first run, each fixed and kept fixed: help that matches the parser,
silent no-ops that now say so, a readable loss plot, a model card without placeholders, and Hub
failures that end in one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ltxv2_diffusers.data.prompts import parse_prompt_line
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.timesteps import TimestepFormat
from ltxv2_diffusers.training.args import ArgsError, build_parser, parse_args, validate_args

REPO = Path(__file__).resolve().parents[1]


def hub_args(**kw) -> argparse.Namespace:
    """The flags the Hub upload reads."""
    base = dict(mode=LtxMode.AV, timestep_format=TimestepFormat.FLOWMATCH_1_1000, ltxv2_model="model.safetensors",
                network_dim=4, network_alpha=4.0, learning_rate=1e-4, hub_model_id="me/my-lora", hub_private=False,
                hub_token=None)
    return argparse.Namespace(**{**base, **kw})


@pytest.fixture()
def argv(tmp_path: Path):
    """A valid training command line on placeholder files (validation never opens them)."""
    (tmp_path / "data.toml").write_text("[[datasets]]\n")
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "prompts.txt").write_text("a cat --W 64 --H 64 --F 9\n")
    return ["--dataset_config", str(tmp_path / "data.toml"), "--ltxv2_model", str(tmp_path / "model.safetensors"),
            "--ltxv2_timestep_format", "flowmatch_1_1000", "--output_dir", str(tmp_path / "out")]


def test_preview_overrides_take_either_case_and_help_shows_what_parses():
    prompt = parse_prompt_line("a cat --W 96 --h 64 --F 17 --S 3 --G 2.5 --D 7 --N blurry")
    assert (prompt.width, prompt.height, prompt.num_frames, prompt.steps, prompt.guidance_scale, prompt.seed,
            prompt.negative_prompt) == (96, 64, 17, 3, 2.5, 7, "blurry")
    help_text = " ".join(build_parser().format_help().split())
    assert "--w/--h/--f/--s/--g/--d/--n" in help_text
    for override in ("w", "h", "f", "s", "g", "d", "n"):  # every override the help names parses
        value = {"w": "64", "h": "64", "f": "9", "n": "x"}.get(override, "1")
        assert parse_prompt_line(f"p --{override} {value}") is not None


def test_sample_prompts_without_a_schedule_says_so(argv, tmp_path, caplog):
    prompts = ["--sample_prompts", str(tmp_path / "prompts.txt")]
    with caplog.at_level("WARNING"):
        parse_args(argv + prompts)
    assert "--sample_prompts renders no previews without --sample_every_n_steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        parse_args(argv + prompts + ["--sample_every_n_steps", "10"])
    assert "renders no previews" not in caplog.text


def test_log_with_default_follows_what_is_installed(argv, monkeypatch):
    assert parse_args(argv).log_with == "tensorboard"  # installed by install.sh --dev
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # how Python marks a module as not importable
    assert parse_args(argv).log_with == "none"
    args = build_parser().parse_args(argv + ["--log_with", "tensorboard"])
    with pytest.raises(ArgsError, match="--log_with tensorboard needs tensorboard: pip install tensorboard"):
        validate_args(args)


def test_demo_help_and_readme_promise_the_same_time():
    out = subprocess.run([sys.executable, "-m", "ltxv2_diffusers.cli.demo", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "well under a minute" in " ".join(out.split())
    assert "well under a minute" in (REPO / "README.md").read_text()


def test_loss_plot_has_axis_labels_and_a_legend(tmp_path):
    from ltxv2_diffusers.training.plotting import RAW, SKIPPED, SMOOTH, plot_loss_curve

    history = [(step, 1.0 / step) for step in range(1, 101)]
    image = Image.open(plot_loss_curve(history, tmp_path / "loss.png", skipped=[40])).convert("RGB")
    width, height = image.size
    legend = {image.getpixel((x, y)) for x in range(width - 200, width) for y in range(20, 80)}
    assert {RAW, SMOOTH, SKIPPED} <= legend
    below_axis = [image.getpixel((x, y)) for x in range(width // 2 - 60, width // 2 + 60) for y in range(height - 20, height)]
    above_ticks = [image.getpixel((x, y)) for x in range(0, 40) for y in range(0, 14)]
    assert min(map(sum, below_axis)) < 200 and min(map(sum, above_ticks)) < 200  # "optimizer step", "loss"
    # without skipped steps the legend does not list them
    image = Image.open(plot_loss_curve(history, tmp_path / "clean.png")).convert("RGB")
    assert SKIPPED not in {image.getpixel((x, y)) for x in range(width - 200, width) for y in range(20, 80)}


def test_model_card_credits_the_package_without_a_placeholder_link(tmp_path):
    from ltxv2_diffusers import __version__
    from ltxv2_diffusers.training.hub import stage_upload

    (tmp_path / "my.safetensors").write_bytes(b"x")
    args = hub_args(ltxv2_model="Lightricks/LTX-2")
    card = (stage_upload(args, tmp_path, tmp_path / "my.safetensors", 3, []) / "README.md").read_text()
    assert f"ltxv2-diffusers {__version__}" in card
    assert "https://github.com/)" not in card and "](https://github.com/" not in card


def test_offline_push_is_one_line_naming_the_files(tmp_path, monkeypatch):
    from ltxv2_diffusers.training.hub import HubUploadError, push_lora

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "my.safetensors").write_bytes(b"x")
    args = hub_args()
    with pytest.raises(HubUploadError) as info:
        push_lora(args, tmp_path, tmp_path / "my.safetensors", 3)  # the real huggingface_hub client
    message = str(info.value)
    assert "\n" not in message and message.startswith("--push_to_hub me/my-lora: upload failed")
    assert f"hf upload me/my-lora {tmp_path / 'hub_upload'}" in message
    assert (tmp_path / "hub_upload" / "my.safetensors").is_file()


def test_offline_hub_id_is_one_line_naming_the_id():
    from ltxv2_diffusers.models.loading import load_components

    with pytest.raises(FileNotFoundError) as info:
        load_components("nobody/no-such-ltx2", components=["vae"])  # tests run with HF_HUB_OFFLINE=1
    message = str(info.value)
    assert "\n" not in message and message.startswith("nobody/no-such-ltx2: not a local file or folder")
    assert "hf download nobody/no-such-ltx2" in message


def test_a_run_whose_push_fails_keeps_its_lora_and_ends_in_one_line(tmp_path_factory, tmp_path):
    from conftest import baseline_argv, workspace
    from ltxv2_diffusers.training.trainer import Trainer, TrainingFailed

    ws = workspace(tmp_path_factory)
    argv = baseline_argv(ws, tmp_path, steps=1, extra=["--push_to_hub", "--hub_model_id", "me/my-lora"])
    with pytest.raises(TrainingFailed) as info:  # tests run with HF_HUB_OFFLINE=1
        Trainer(parse_args(argv)).run()
    assert "\n" not in str(info.value) and str(info.value).startswith("--push_to_hub me/my-lora: upload failed")
    lora = tmp_path / "demo_lora.safetensors"
    assert lora.is_file() and (tmp_path / "hub_upload" / lora.name).read_bytes() == lora.read_bytes()


def test_the_trainer_cli_says_an_offline_hub_id_in_one_line(tmp_path_factory, tmp_path, capsys):
    from conftest import workspace
    from ltxv2_diffusers.cli.train import main

    ws = workspace(tmp_path_factory)
    argv = ws.train_argv(tmp_path, 1)
    argv[argv.index("--ltxv2_model") + 1] = "nobody/no-such-ltx2"
    assert main(argv) == 2  # the user's input: tests run with HF_HUB_OFFLINE=1
    err = capsys.readouterr().err
    assert "Traceback" not in err  # progress bars before it, then the one line
    assert err.strip().splitlines()[-1].startswith("error: nobody/no-such-ltx2: not a local file or folder")
