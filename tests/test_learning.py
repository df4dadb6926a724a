"""Learning: a LoRA trained on one cached item pulls the stock `LTX2Pipeline`'s samples toward that item.

This checks the timestep format, the sigma convention and the velocity sign end to end.

Two facts of the tiny random model shape the test:
- Its random VAEs give latents of std ≈0.25 with identity statistics, so the item would be a small
  signal under unit noise. Real LTX-2 VAEs ship statistics that normalize latents to unit scale; the
  test writes such statistics (measured on the cached item) into the checkpoint, as a real one has.
- Its transformer is 32 (video) / 16 (audio) wide between the fixed `proj_in` and `proj_out`, so its
  velocity lives in the column space of `proj_out`; the rest of the initial noise reaches the sample
  unchanged, LoRA or not. Distances are measured in that space.
"Closer to the item" must also beat a decoy with the item's own values rearranged (channels rolled):
a LoRA that only learned to shrink its outputs gets as close to the decoy as to the item.
"""

from __future__ import annotations

import pytest
import torch

from conftest import locked_build, session_dir

pytestmark = pytest.mark.slow


def _projector(weight: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(weight.detach().double())
    return (q @ q.T).float()


def _video_tokens(latents: torch.Tensor) -> torch.Tensor:
    return latents.flatten(2).transpose(1, 2)  # [B,128,F,H,W] -> [B,N,128]


def _audio_tokens(latents: torch.Tensor) -> torch.Tensor:
    b, c, t, m = latents.shape
    return latents.permute(0, 2, 1, 3).reshape(b, t, c * m)  # channel-major, as LTX-2 packs audio


def _first_item(ws):
    from ltxv2_diffusers.data.batching import BatchManager
    from ltxv2_diffusers.data.config import load_dataset_config

    return next(BatchManager.from_config(load_dataset_config(ws.dataset_config), mode="av").iter_epoch(0))


def _build(target):
    """One clip, its caches, then latent statistics written into the checkpoint (scalar mean 0, std)."""
    from ltxv2_diffusers.cli.demo import run_cache_jobs, write_workspace
    from ltxv2_diffusers.models.loading import load_components, save_official_checkpoint

    ws = write_workspace(target, num_clips=1)
    run_cache_jobs(ws)
    item = _first_item(ws)
    parts = load_components(str(ws.model))
    with torch.no_grad():
        parts["vae"].latents_std.fill_(float(item["latents"].float().std()))
        parts["audio_vae"].latents_std.fill_(float(item["audio_latents"].float().std()))
    save_official_checkpoint(ws.model, **parts)


def test_lora_pulls_pipeline_samples_toward_the_trained_item():
    from ltxv2_diffusers.cli.demo import DemoWorkspace
    from ltxv2_diffusers.models.loading import load_components
    from ltxv2_diffusers.training.args import parse_args
    from ltxv2_diffusers.training.previews import build_preview_pipeline
    from ltxv2_diffusers.training.trainer import Trainer

    root = locked_build(session_dir(), "ltxv2_learning_ws", _build)
    ws = DemoWorkspace(root, root / "model" / "ltx-2-tiny.safetensors", root / "gemma-3-tiny",
                       root / "data" / "dataset.toml", root / "prompts.txt")
    args = parse_args(ws.train_argv(root / "out", 100, ["--learning_rate", "3e-3", "--network_dim", "16",
                                                        "--network_alpha", "16", "--seed", "1"]))
    lora = Trainer(args).run()

    item = _first_item(ws)
    x0, a0 = item["latents"].float(), item["audio_latents"].float()

    def sample(with_lora: bool, seed: int):
        parts = load_components(str(ws.model))
        pipe = build_preview_pipeline(parts["transformer"], parts["vae"], parts["audio_vae"], parts["vocoder"])
        pipe.set_progress_bar_config(disable=True)
        if with_lora:
            pipe.load_lora_weights(str(lora))
        video, audio = pipe(
            prompt_embeds=item["text"].float(), prompt_attention_mask=item["text_mask"], width=64, height=64,
            num_frames=9, frame_rate=24.0, num_inference_steps=20, guidance_scale=1.0, stg_scale=0.0,
            modality_scale=1.0, guidance_rescale=0.0, audio_guidance_scale=None, audio_stg_scale=None,
            audio_modality_scale=None, audio_guidance_rescale=None, spatio_temporal_guidance_blocks=None,
            generator=torch.Generator().manual_seed(seed), output_type="latent", return_dict=False)
        return video, audio, parts

    for seed in (123, 7):
        base_v, base_a, parts = sample(False, seed)
        lora_v, lora_a, _ = sample(True, seed)
        tr = parts["transformer"]
        std_v, std_a = float(parts["vae"].latents_std[0]), float(parts["audio_vae"].latents_std[0])
        pv, pa = _projector(tr.proj_out.weight), _projector(tr.audio_proj_out.weight)
        n = min(base_a.shape[2], a0.shape[2])  # the pipeline rounds the audio length; compare the overlap

        def dist(video, audio, target_v, target_a):
            """Mean squared distance in the model's (normalized) space, inside proj_out's column space."""
            dv = (((_video_tokens(video) - _video_tokens(target_v)) / std_v) @ pv.T).square().mean()
            da = (((_audio_tokens(audio[:, :, :n]) - _audio_tokens(target_a[:, :, :n])) / std_a) @ pa.T).square().mean()
            return float(dv), float(da)

        decoy_v, decoy_a = x0.roll(64, dims=1), a0.roll(4, dims=1)
        base = dist(base_v, base_a, x0, a0)
        trained = dist(lora_v, lora_a, x0, a0)
        to_decoy = dist(lora_v, lora_a, decoy_v, decoy_a)
        print(f"seed {seed}: without LoRA {base}, with LoRA {trained}, with LoRA to the decoy {to_decoy}")
        # measured here: video 0.50 / 0.59, audio 0.26 / 0.45 of the two references; a flipped velocity
        # sign gives no gain at all (video 1.03 / 1.3)
        for i, name, gain, over_decoy in ((0, "video", 0.6, 0.75), (1, "audio", 0.4, 0.6)):
            assert trained[i] < gain * base[i], f"{name}: {trained[i]:.4f} with the LoRA vs {base[i]:.4f} without"
            assert trained[i] < over_decoy * to_decoy[i], (
                f"{name}: {trained[i]:.4f} to the item vs {to_decoy[i]:.4f} to a decoy")
