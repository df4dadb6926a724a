"""Each mode trains what it says (video / av / audio LoRA keys, previews as mp4 or wav), and gradient
checkpointing changes nothing but memory."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import baseline_argv, workspace
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


def test_preview_prompts_missing_from_the_cache_use_the_text_encoder(tmp_path_factory, tmp_path):
    """A prompt that was never cached (and the empty negative prompt CFG needs) is encoded once with
    --text_encoder; without it the error names the prompt and both ways out."""
    ws = workspace(tmp_path_factory)
    prompts = tmp_path / "new_prompts.txt"
    prompts.write_text("a prompt nobody cached --w 64 --h 64 --f 9 --s 2 --g 2.0\n")
    argv = baseline_argv(ws, tmp_path / "out", steps=1, extra=["--sample_prompts", str(prompts), "--sample_at_first",
                                                               "--max_length", "64"])
    Trainer(parse_args(argv)).run()
    assert [p.name for p in (tmp_path / "out" / "samples").iterdir()] == ["step00000000_00.mp4"]
    i = argv.index("--text_encoder")
    without = argv[:i] + argv[i + 2:] + ["--output_dir", str(tmp_path / "out2")]
    with pytest.raises(ValueError, match="a prompt nobody cached.*--sample_prompts.*--text_encoder"):
        Trainer(parse_args(without)).run()


def test_epochs_accumulation_pruning_and_tensorboard(tmp_path_factory, tmp_path):
    """2 batches per epoch, 2 batches per optimizer step: `--max_train_epochs 3` is 3 steps, one save per
    epoch, `--save_last_n_steps 1` keeps only the newest; TensorBoard gets event files."""
    ws = workspace(tmp_path_factory)
    argv = baseline_argv(ws, tmp_path, extra=["--max_train_epochs", "3", "--gradient_accumulation_steps", "2",
                                              "--save_every_n_epochs", "1", "--save_last_n_steps", "1",
                                              "--log_with", "tensorboard"])
    i = argv.index("--save_every_n_steps")
    del argv[i:i + 2]
    Trainer(parse_args(argv)).run()
    metrics = list(read_metrics(tmp_path / "logs" / "metrics.jsonl"))
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000003"]
    assert list((tmp_path / "logs").rglob("events.out.tfevents.*"))


def test_network_weights_continue_from_a_lora(tmp_path_factory, tmp_path):
    from ltxv2_diffusers.lora import lora_from_model, read_lora
    from ltxv2_diffusers.training.model import build_training_model

    ws = workspace(tmp_path_factory)
    first = _train(ws, tmp_path / "first")
    args = parse_args(baseline_argv(ws, tmp_path / "second", extra=["--network_weights", str(first)]))
    bundle = build_training_model(args)
    loaded, saved = lora_from_model(bundle.transformer), read_lora(first)
    assert loaded.modules.keys() == saved.modules.keys()
    for name, module in saved.modules.items():
        # the official file folds alpha/rank into `up`; the delta each module adds is what must match
        torch.testing.assert_close(loaded.modules[name].delta(1.0), module.delta(1.0), rtol=1e-5, atol=1e-7)
    trainable = {n for n, p in bundle.transformer.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)


def test_a_preview_out_of_gpu_memory_is_skipped_and_training_goes_on(tmp_path_factory, tmp_path, monkeypatch, caplog):
    """Fault injection: the first round of previews raises CUDA's out-of-memory error (as a preview too large
    for the card would). It is skipped with a warning naming what to do; the run trains on, renders the next
    round and delivers its LoRA, with the preview parts back in host memory."""
    from ltxv2_diffusers.training import model as training_model

    real, calls = training_model._render_each, []

    def out_of_memory_once(*args, **kwargs):
        calls.append(args[3])  # the step
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(training_model, "_render_each", out_of_memory_once)
    ws = workspace(tmp_path_factory)
    trainer = Trainer(parse_args(baseline_argv(ws, tmp_path, steps=2, extra=[
        "--sample_prompts", str(ws.prompts), "--sample_at_first", "--sample_every_n_steps", "2"])))
    with caplog.at_level("WARNING"):
        lora = trainer.run()
    assert calls == [0, 2] and lora.exists()
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["step00000002_00.mp4"]
    assert "previews at step 0 ran out of GPU memory; skipped, training goes on" in caplog.text
    assert "--w/--h/--f" in caplog.text
    assert [m["step"] for m in read_metrics(tmp_path / "logs" / "metrics.jsonl")] == [1, 2]
    assert trainer.bundle.preview_parts and all(
        p.device.type == "cpu" for m in trainer.bundle.preview_parts.values() for p in m.parameters())
