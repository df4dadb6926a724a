"""`ltxv2-demo`: the whole workflow offline on a tiny random LTX-2, in well under a minute on a CPU.

Writes a tiny random LTX-2 as an official single-file checkpoint (all components; with `--preset
tiny-2.5`, split into the files of the official LTX-2.5 release layout), a tiny Gemma-3 with its tokenizer, synthetic clips with sound and captions, a dataset.toml and a prompts file; runs
the three cache jobs; trains an `av` LoRA; renders a preview mp4 with audio; prints where it all is.
The same steps with real files are the README's commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Sequence

from ltxv2_diffusers.cli.errors import add_debug_flag

DEMO_PROMPT = "a small synthetic clip with a steady hum --w 64 --h 64 --f 9 --s 8 --d 7"


@dataclasses.dataclass
class DemoWorkspace:
    """Paths of everything the demo writes before training."""

    root: Path
    model: Path
    text_encoder: Path
    dataset_config: Path
    prompts: Path
    vae: Path | None = None  # split layout: the video VAE file (else in `model`)
    audio_vae: Path | None = None  # split layout: the audio VAE + vocoder file

    @property
    def vae_args(self) -> list[str]:
        """`--vae` (and `--audio_vae` for split files) as the training and cache commands take them."""
        if self.vae is None:
            return ["--vae", str(self.model)]
        return ["--vae", str(self.vae), "--audio_vae", str(self.audio_vae)]

    def train_argv(self, output_dir: Path, steps: int, extra: Sequence[str] = ()) -> list[str]:
        """The training command line for this workspace (what the README shows with real files)."""
        return [
            "--dataset_config", str(self.dataset_config), "--ltx_mode", "av",
            "--ltxv2_model", str(self.model), *self.vae_args,
            "--text_encoder", str(self.text_encoder), "--text_encoder_backend", "gemma",
            "--ltxv2_timestep_format", "flowmatch_1_1000", "--network_module", "ltxv2_diffusers.lora",
            "--network_dim", "8", "--network_alpha", "8", "--learning_rate", "1e-3",
            "--max_train_steps", str(steps), "--output_dir", str(output_dir), "--output_name", "demo_lora",
            "--seed", "0", "--log_with", "none", *extra,
        ]


def write_workspace(root: str | Path, num_clips: int = 4, seed: int = 0, batch_size: int = 1,
                    num_layers: int | None = None, preset: str = "tiny") -> DemoWorkspace:
    """Write model, text encoder, clips, dataset.toml and prompts under `root` (no caches yet).
    `num_layers` overrides the tiny transformer's depth (block swapping needs at least three); `preset`
    `tiny-2.5` writes the model as the split files of a release folder."""
    from ltxv2_diffusers.data.synthetic import make_dataset
    from ltxv2_diffusers.models.loading import save_official_checkpoint, save_official_release
    from ltxv2_diffusers.models.presets import build_components
    from ltxv2_diffusers.text.tiny import write_tiny_gemma

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    overrides = {"transformer": {"num_layers": num_layers}} if num_layers else None
    vae = audio_vae = None
    if preset == "tiny-2.5":
        model = root / "model" / "ltx-2.5-tiny"
        vae, audio_vae = (model / "vae" / f"tiny-{kind}.safetensors" for kind in ("video-vae-conv", "audio-vae"))
        if not vae.is_file():
            save_official_release(model, "tiny", **build_components(preset, seed=seed, overrides=overrides))
    else:
        model = root / "model" / f"ltx-2-{preset}.safetensors"
        if not model.is_file():
            model.parent.mkdir(parents=True, exist_ok=True)
            save_official_checkpoint(model, **build_components(preset, seed=seed, overrides=overrides))
    # LTX-2.5 was trained with Gemma 4 (shipped as one file with the text projection), earlier versions
    # with Gemma 3.
    if preset == "tiny-2.5":
        text_encoder = model / "text_encoders" / "tiny-gemma4-with-proj.safetensors"
        if not text_encoder.is_file():
            _pack_tiny_gemma4(model, text_encoder, root / "gemma-4-tiny", seed)
    else:
        text_encoder = root / "gemma-3-tiny"
        if not (text_encoder / "config.json").is_file():
            write_tiny_gemma(text_encoder, seed=seed)
    dataset_config = root / "data" / "dataset.toml"
    if not dataset_config.is_file():
        dataset_config = make_dataset(root / "data", num_videos=num_clips, num_frames=17, size=(96, 96),
                                      resolution=(64, 64), target_frames=(9,), audio=True, batch_size=batch_size)
    prompts = root / "prompts.txt"
    prompts.write_text(DEMO_PROMPT + "\n", encoding="utf-8")
    return DemoWorkspace(root, model, text_encoder, Path(dataset_config), prompts, vae, audio_vae)


def _pack_tiny_gemma4(release: Path, target: Path, folder: Path, seed: int) -> None:
    """A tiny Gemma 4 packed with the release's text projection into one text-encoder file, as LTX-2.5 ships."""
    import shutil

    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from ltxv2_diffusers.text.gemma_file import write_gemma_file
    from ltxv2_diffusers.text.tiny import write_tiny_gemma4

    write_tiny_gemma4(folder, seed=seed)
    projection_file = release / "text_encoders" / "tiny-text-projection.safetensors"
    write_gemma_file(target, AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder),
                     extra=load_file(str(projection_file)))
    projection_file.unlink()
    shutil.rmtree(folder)


def run_cache_jobs(ws: DemoWorkspace, mode: str = "av") -> None:
    """The three cache commands, as a user runs them (video latents, audio latents, text + prompts)."""
    from ltxv2_diffusers.cli import cache_audio_latents, cache_latents, cache_text

    common = ["--dataset_config", str(ws.dataset_config), "--ltx_mode", mode, "--device", "cpu", "--num_workers", "1"]
    steps = [
        ("ltxv2-cache-latents", cache_latents.main, [*common, "--vae", str(ws.vae or ws.model)]),
        ("ltxv2-cache-audio-latents", cache_audio_latents.main, [*common, "--audio_vae", str(ws.audio_vae or ws.model)]),
        ("ltxv2-cache-text-encoder-outputs", cache_text.main,
         [*common, "--text_encoder", str(ws.text_encoder), "--text_encoder_backend", "gemma",
          "--ltxv2_model", str(ws.model), "--sample_prompts", str(ws.prompts), "--max_length", "64"]),
    ]
    for name, fn, argv in steps:
        if mode == "video" and name == "ltxv2-cache-audio-latents":
            continue
        print(f"$ {name} {' '.join(argv)}", flush=True)
        code = fn(argv)
        if code:
            raise SystemExit(f"{name} failed with exit code {code}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ltxv2-demo", description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", type=Path, default=Path("ltxv2-demo"), help="where everything goes")
    p.add_argument("--steps", type=int, default=40, help="training steps")
    p.add_argument("--clips", type=int, default=4, help="synthetic clips")
    p.add_argument("--preset", default="tiny", choices=("tiny", "tiny-2.3", "tiny-2.5"),
                   help="tiny model layout: LTX-2.0, 2.3, or 2.5 (written as the release's split files)")
    add_debug_flag(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo end to end; returns 0 when a LoRA and a preview were written."""
    from ltxv2_diffusers.cli.errors import run_cli

    return run_cli(_main, argv, prog="ltxv2-demo")


def _main(argv: Sequence[str] | None = None) -> int:
    from ltxv2_diffusers.cli.train import main as train_main

    args = build_parser().parse_args(argv)
    if args.steps < 1 or args.clips < 1:
        raise SystemExit("ltxv2-demo: --steps and --clips must be >= 1")
    start = time.perf_counter()
    root = args.output_dir.resolve()
    gemma = "Gemma 4" if args.preset == "tiny-2.5" else "Gemma 3"
    print(f"[1/3] writing a tiny random LTX-2 ({args.preset}), a tiny {gemma} and {args.clips} clips under {root}",
          flush=True)
    ws = write_workspace(root, num_clips=args.clips, preset=args.preset)
    print("[2/3] caching latents, audio latents and text embeddings", flush=True)
    run_cache_jobs(ws)
    out = root / "output"
    train_argv = ws.train_argv(out, args.steps, ["--sample_prompts", str(ws.prompts),
                                                 "--sample_every_n_steps", str(args.steps),
                                                 "--save_every_n_steps", str(max(1, args.steps // 2))])
    print(f"[3/3] training an av LoRA for {args.steps} steps:\n$ ltxv2-train-lora {' '.join(train_argv)}", flush=True)
    code = train_main(train_argv)
    if code:
        return code
    previews = sorted((out / "samples").glob("*.mp4"))
    lora = out / "demo_lora.safetensors"
    print(f"\ndone in {time.perf_counter() - start:.0f} s")
    label = "model (release folder):" if ws.vae else "model (official single file):"
    print(f"  {label:<30}{ws.model}")
    print(f"  {'text encoder:':<30}{ws.text_encoder}")
    print(f"  dataset config:               {ws.dataset_config}")
    print(f"  preview prompts:              {ws.prompts}")
    print(f"  LoRA (official/ComfyUI):      {lora}")
    print(f"  LoRA (diffusers):             {out / 'demo_lora-diffusers'}")
    print(f"  checkpoints:                  {out / 'checkpoints'}")
    print(f"  loss curve:                   {out / 'loss.png'}")
    for preview in previews:
        print(f"  preview (mp4 with audio):     {preview}")
    return 0 if lora.is_file() and previews else 1


if __name__ == "__main__":
    sys.exit(main())
