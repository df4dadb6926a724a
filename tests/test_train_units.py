"""Training pieces on real tensors and tiny real models: losses, TrainStep, checkpoints, previews, plot, hub."""

from __future__ import annotations

import argparse
import wave
from pathlib import Path

import av
import pytest
import torch

from ltxv2_diffusers.models.adapter import ModalityOutput, adapter_class_for_mode
from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.timesteps import TimestepFormat
from ltxv2_diffusers.training import checkpoints as ckpt
from ltxv2_diffusers.training.losses import apply_sqrt_weight, compute_losses, masked_mse
from ltxv2_diffusers.data.prompts import PreviewPrompt, load_prompts, parse_prompt_line
from ltxv2_diffusers.training.previews import build_preview_pipeline, render_preview
from ltxv2_diffusers.training.step import TrainStep


def make_args(mode="av", **kw):
    base = dict(mode=LtxMode(mode), weighting_scheme="none", video_loss_weight=1.0, audio_loss_weight=1.0,
                independent_audio_sigmas=False, sigma_sampling="shifted_logit_normal",
                timestep_format=TimestepFormat.FLOWMATCH_1_1000)
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.fixture(scope="module")
def tiny():
    return build_components("tiny", seed=0)


def make_batch(b=2, audio_frames=7, lengths=(7, 5), text_width=48):
    g = torch.Generator().manual_seed(0)
    return {
        "latents": torch.randn(b, 128, 2, 2, 2, generator=g), "audio_latents": torch.randn(b, 8, audio_frames, 16, generator=g),
        "audio_lengths": torch.tensor(lengths[:b]), "text": torch.randn(b, 16, text_width, generator=g),
        "text_mask": torch.ones(b, 16, dtype=torch.bool), "fps": torch.full((b,), 24.0), "keys": [f"k{i}" for i in range(b)],
    }


# ---------------------------------------------------------------- losses

def test_masked_mse_ignores_masked_tokens():
    pred, target = torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)
    target[1, 2] = 100.0  # only in a masked token
    mask = torch.tensor([[True, True, True], [True, True, False]])
    assert masked_mse(pred, target, mask).item() == 0.0
    target[0, 0, 0] = 2.0
    assert masked_mse(pred, target, mask).item() == pytest.approx(4.0 / (5 * 4))


def test_masked_mse_of_an_all_padded_batch_is_zero_and_keeps_the_graph():
    pred = torch.randn(1, 3, 4, requires_grad=True)
    loss = masked_mse(pred, torch.zeros(1, 3, 4), torch.zeros(1, 3, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()  # DDP needs every rank's graph to reach the parameters
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_sqrt_weight_scales_loss_exactly():
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 5, 3, generator=g), torch.randn(2, 5, 3, generator=g)
    base = ((pred - target) ** 2).mean(dim=(1, 2))
    p, t = apply_sqrt_weight(pred, target, torch.tensor([2.0, 0.5]))
    weighted = ((p - t) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(weighted, base * torch.tensor([2.0, 0.5]))


def test_loss_weights_and_terms():
    g = torch.Generator().manual_seed(2)
    out = {m: ModalityOutput(torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g),
                             torch.ones(2, 4, dtype=torch.bool), torch.tensor([0.3, 0.7])) for m in ("video", "audio")}
    total, terms = compute_losses(out, {}, make_args())
    v = masked_mse(out["video"].pred, out["video"].target, None)
    a = masked_mse(out["audio"].pred, out["audio"].target, None)
    torch.testing.assert_close(terms["loss/video"], v)
    torch.testing.assert_close(terms["loss/audio"], a)
    total2, terms2 = compute_losses(out, {}, make_args(video_loss_weight=3.0, audio_loss_weight=0.25))
    torch.testing.assert_close(terms2["loss/video"], 3.0 * v)
    torch.testing.assert_close(terms2["loss/audio"], 0.25 * a)
    torch.testing.assert_close(total2, 3.0 * v + 0.25 * a)


def test_weighting_scheme_changes_loss():
    from ltxv2_diffusers import plugins

    schemes = plugins.weighting_schemes()
    g = torch.Generator().manual_seed(3)
    sig = torch.tensor([0.2, 0.9])
    out = {"video": ModalityOutput(torch.randn(2, 4, 8, generator=g), torch.randn(2, 4, 8, generator=g),
                                   torch.ones(2, 4, dtype=torch.bool), sig)}
    plain, _ = compute_losses(out, {}, make_args("video"))
    other = next(name for name in schemes if name != "none")
    w = torch.as_tensor(schemes[other](sig, "video")).float()
    weighted, _ = compute_losses(out, {}, make_args("video", weighting_scheme=other))
    per = ((out["video"].pred - out["video"].target) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(weighted, (per * w).mean())
    assert not torch.allclose(plain, weighted)


# ---------------------------------------------------------------- TrainStep

@pytest.mark.parametrize("mode", ["video", "av", "audio"])
def test_train_step_modes_and_determinism(tiny, mode):
    tr = tiny["transformer"]
    adapter = adapter_class_for_mode(mode).from_components(tr, vae=tiny["vae"], audio_vae=tiny["audio_vae"])
    step = TrainStep(adapter, make_args(mode))
    batch = make_batch()
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(2)]  # noqa: E731
    with torch.no_grad():
        loss1, logs = step(batch, gens())
        loss2, _ = step(batch, gens())
        # per-item generators: item 1 alone gives the same sigma as in the pair
        s_pair, _ = step.draw(batch, gens())
        single = {k: (v[1:] if isinstance(v, torch.Tensor) else v[1:]) for k, v in batch.items()}
        s_one, _ = step.draw(single, [torch.Generator().manual_seed(11)])
    assert torch.equal(loss1, loss2) and torch.isfinite(loss1)
    expected = {"video": {"loss/video"}, "av": {"loss/video", "loss/audio"}, "audio": {"loss/audio"}}[mode]
    assert expected <= set(logs) and not ({"loss/video", "loss/audio"} - expected) & set(logs)
    for m in s_one:
        assert torch.equal(s_pair[m][1:], s_one[m])


def test_noise_drawn_on_device_is_per_item_and_seeded_by_the_host_generator(tiny):
    """The CUDA path's noise (a device generator seeded by one draw of the item's generator), run on the
    CPU: an item's noise and sigma do not depend on its batch, the same seeds repeat it, and it is not
    the host-drawn noise."""
    tr = tiny["transformer"]
    adapter = adapter_class_for_mode("av").from_components(tr, vae=tiny["vae"], audio_vae=tiny["audio_vae"])
    step = TrainStep(adapter, make_args("av"))
    assert step.noise_on_device(torch.device("cpu")) is False
    assert step.noise_on_device(torch.device("cuda")) is True
    batch = make_batch()
    single = {k: v[1:] for k, v in batch.items()}
    gens = lambda: [torch.Generator().manual_seed(10 + i) for i in range(2)]  # noqa: E731
    host_sigmas, host_noise = step.draw(batch, gens())
    step.draw_noise_on_device = True
    sigmas, noise = step.draw(batch, gens())
    again_sigmas, again = step.draw(batch, gens())
    one_sigmas, one = step.draw(single, [torch.Generator().manual_seed(11)])
    for m in ("video", "audio"):
        assert noise[m].shape == batch["latents" if m == "video" else "audio_latents"].shape
        assert torch.equal(noise[m], again[m]) and torch.equal(noise[m][1:], one[m])
        assert torch.equal(sigmas[m], host_sigmas[m]) and torch.equal(sigmas[m][1:], one_sigmas[m])
        assert not torch.allclose(noise[m], host_noise[m])
        assert abs(float(noise[m].std()) - 1.0) < 0.2


def test_train_step_video_mode_leaves_audio_untouched(tiny):
    """A video-mode step's gradients reach no audio module."""
    from ltxv2_diffusers.lora import add_lora

    tr = build_components("tiny", seed=1, components=("transformer",))["transformer"]
    add_lora(tr, LtxMode.VIDEO, rank=2)
    adapter = adapter_class_for_mode("video").from_components(tr, vae=tiny["vae"], audio_vae=tiny["audio_vae"])
    loss, _ = TrainStep(adapter, make_args("video"))(make_batch(), torch.Generator().manual_seed(0))
    loss.backward()
    grads = {n for n, p in tr.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and not [n for n in grads if "audio" in n]


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_write_is_atomic_and_never_overwrites(tmp_path):
    d = ckpt.CheckpointDir(tmp_path)

    def boom(tmp: Path):
        (tmp / "half").write_text("x")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        d.write(5, boom)
    assert d.latest() is None and not list(d.root.iterdir())  # a failed write leaves nothing
    (d.root / ".tmp-step-00000005-1").mkdir()  # what a SIGKILL mid-write leaves
    (d.root / ".tmp-step-00000005-1" / "half").write_text("x")
    assert d.latest() is None  # the half-written folder is invisible to --resume latest
    assert [p.name for p in d.clean_partial()] and not list(d.root.iterdir())

    def fill(tmp: Path):
        (tmp / ckpt.STATE_FILE).write_text("{}")

    first = d.write(5, fill)
    second = d.write(5, fill)  # a resumed run reaching the same step keeps both
    assert first != second and first.is_dir() and second.is_dir()
    assert d.latest() == second
    d.write(9, fill)
    assert [p.name for p in d.prune(6)] == [first.name, second.name]
    assert [s for s, _ in d.all()] == [9]


def test_training_state_round_trip(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        model(torch.randn(3, 4)).square().mean().backward()
        opt.step(); sched.step(); opt.zero_grad()
    progress = ckpt.TrainingProgress(global_step=3, epoch=1, batch_in_epoch=2, loss_history=[(1, 0.5)])
    ckpt.save_training_state(tmp_path, model, opt, sched, progress)
    expected_next = torch.randn(3)

    torch.manual_seed(123)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model2[0].requires_grad_(False)
    opt2 = torch.optim.AdamW([p for p in model2.parameters() if p.requires_grad], lr=1e-2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (1 + s))
    got = ckpt.load_training_state(tmp_path, model2, opt2, sched2)
    assert got.global_step == 3 and got.batch_in_epoch == 2 and got.loss_history == [(1, 0.5)]
    assert torch.equal(model[1].weight, model2[1].weight)
    assert sched2.last_epoch == 3 and opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.randn(3), expected_next)  # RNG restored


# ---------------------------------------------------------------- previews

def test_prompt_lines():
    p = parse_prompt_line("a cat on a mat --w 96 --h 64 --f 17 --s 5 --g 3.5 --d 9 --n blurry, dark", index=2)
    assert (p.prompt, p.width, p.height, p.num_frames, p.steps, p.guidance_scale, p.seed, p.negative_prompt) == (
        "a cat on a mat", 96, 64, 17, 5, 3.5, 9, "blurry, dark")
    assert parse_prompt_line("# comment") is None and parse_prompt_line("   ") is None
    for bad, msg in [("x --w 70", "multiples of 32"), ("x --f 10", r"8k\+1"), ("x --q 1", "unknown override --q"),
                     ("x --s five", "is not a int")]:
        with pytest.raises(ValueError, match=msg):
            parse_prompt_line(bad)


def test_prompt_file_errors_name_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("# only a comment\n")
    with pytest.raises(ValueError, match="p.txt: no prompts"):
        load_prompts(f)


@pytest.mark.parametrize("mode, suffix", [("av", ".mp4"), ("audio", ".wav")])
def test_preview_through_stock_pipeline(tiny, tmp_path, mode, suffix):
    pipe = build_preview_pipeline(tiny["transformer"], tiny["vae"], tiny["audio_vae"], tiny["vocoder"])
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    embeds = (torch.randn(1, 8, 48, generator=g), torch.ones(1, 8, dtype=torch.bool))
    negative = (torch.zeros(1, 8, 48), torch.ones(1, 8, dtype=torch.bool))
    prompt = PreviewPrompt("x", width=64, height=64, num_frames=9, steps=2, guidance_scale=2.0)
    path = render_preview(pipe, prompt, embeds, negative, LtxMode(mode), tmp_path / "p")
    assert path.suffix == suffix and path.stat().st_size > 0
    if suffix == ".mp4":
        with av.open(str(path)) as f:
            kinds = sorted(s.type for s in f.streams)
            frames = sum(1 for _ in f.decode(video=0))
        assert kinds == ["audio", "video"] and frames == 9
    else:
        with wave.open(str(path)) as w:
            assert w.getframerate() == tiny["vocoder"].config.output_sampling_rate and w.getnframes() > 0


def test_preview_with_a_bf16_transformer_from_fp32_text_cache(tmp_path):
    """The GPU fast path trains a bf16 transformer while text caches hold fp32 embeddings."""
    parts = build_components("tiny", seed=0)
    transformer = parts["transformer"].to(torch.bfloat16)
    pipe = build_preview_pipeline(transformer, parts["vae"], parts["audio_vae"], parts["vocoder"])
    pipe.set_progress_bar_config(disable=True)
    embeds = (torch.randn(1, 8, 48, generator=torch.Generator().manual_seed(0)), torch.ones(1, 8, dtype=torch.bool))
    prompt = PreviewPrompt("x", width=64, height=64, num_frames=9, steps=2)
    path = render_preview(pipe, prompt, embeds, None, LtxMode.AV, tmp_path / "p")
    with av.open(str(path)) as f:
        assert sum(1 for _ in f.decode(video=0)) == 9


def test_previews_decode_in_tiles_whatever_their_length(tmp_path):
    """The preview VAE decodes in diffusers' tiles (bounded memory): a 17-frame preview goes through the
    temporal tiles (3 latent frames, tiles of 2) and still gives every frame."""
    parts = build_components("tiny", seed=0)
    vae = parts["vae"]
    pipe = build_preview_pipeline(parts["transformer"], vae, parts["audio_vae"], parts["vocoder"])
    pipe.set_progress_bar_config(disable=True)
    assert vae.use_tiling and vae.use_framewise_decoding
    tiled = []
    original = vae._temporal_tiled_decode
    vae._temporal_tiled_decode = lambda *a, **k: tiled.append(a[0].shape) or original(*a, **k)
    embeds = (torch.randn(1, 8, 48, generator=torch.Generator().manual_seed(0)), torch.ones(1, 8, dtype=torch.bool))
    prompt = PreviewPrompt("x", width=64, height=64, num_frames=17, steps=2)
    path = render_preview(pipe, prompt, embeds, None, LtxMode.VIDEO, tmp_path / "p")
    assert [shape[2] for shape in tiled] == [3]
    with av.open(str(path)) as f:
        assert sum(1 for _ in f.decode(video=0)) == 17


@pytest.mark.skipif(not torch.cuda.is_available(), reason="moves the preview parts to a GPU and back")
def test_preview_parts_wait_in_host_memory_on_a_gpu(tmp_path):
    from ltxv2_diffusers.training.previews import preview_parts_on

    parts = {k: v for k, v in build_components("tiny", seed=0).items() if k in ("vae", "audio_vae", "vocoder")}
    with pytest.raises(RuntimeError, match="inside"):
        with preview_parts_on(parts, "cuda"):
            assert all(p.is_cuda for m in parts.values() for p in m.parameters())
            raise RuntimeError("a preview failed inside")
    assert all(p.device.type == "cpu" for m in parts.values() for p in m.parameters())


# ---------------------------------------------------------------- plot and hub

def test_loss_plot(tmp_path):
    from PIL import Image

    from ltxv2_diffusers.training.plotting import plot_loss_curve

    path = plot_loss_curve([(i, 1.0 / i) for i in range(1, 50)], tmp_path / "loss.png", skipped=[7])
    assert Image.open(path).size == (800, 400)
    assert plot_loss_curve([(1, float("nan"))], tmp_path / "none.png") is None


class RecordingHub:
    """Stands in for `huggingface_hub.HfApi` (no network here); records the calls made to it."""

    def __init__(self):
        self.calls = []

    def create_repo(self, **kw):
        self.calls.append(("create_repo", kw))
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{kw['repo_id']}")

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw, sorted(str(p.relative_to(kw["folder_path"]))
                                                     for p in Path(kw["folder_path"]).rglob("*") if p.is_file())))


def test_hub_push_stages_lora_card_and_previews(tmp_path):
    from huggingface_hub import ModelCard

    from ltxv2_diffusers.training.hub import push_lora

    (tmp_path / "my.safetensors").write_bytes(b"x")
    (tmp_path / "my-diffusers").mkdir()
    (tmp_path / "my-diffusers" / "pytorch_lora_weights.safetensors").write_bytes(b"y")
    preview = tmp_path / "samples" / "step00000010_00.mp4"
    preview.parent.mkdir()
    preview.write_bytes(b"z")
    args = make_args(ltxv2_model="Lightricks/LTX-2", network_dim=16, network_alpha=16.0, learning_rate=1e-4,
                     hub_model_id="me/my-lora", hub_private=True, hub_token=None)
    hub = RecordingHub()
    url = push_lora(args, tmp_path, tmp_path / "my.safetensors", 10, previews=[preview], api=hub)
    assert url == "https://huggingface.co/me/my-lora"
    assert hub.calls[0] == ("create_repo", dict(repo_id="me/my-lora", private=True, exist_ok=True, repo_type="model"))
    _, kw, files = hub.calls[1]
    assert files == ["README.md", "my-diffusers/pytorch_lora_weights.safetensors", "my.safetensors",
                     "samples/step00000010_00.mp4"]
    card = ModelCard.load(Path(kw["folder_path"]) / "README.md")
    assert card.data.base_model == "Lightricks/LTX-2" and "lora" in card.data.tags
    for text in ("`av`", "16 / 16.0", "| steps | 10 |", "samples/step00000010_00.mp4"):
        assert text in card.text
