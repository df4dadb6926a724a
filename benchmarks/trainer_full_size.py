"""The trainer CLI itself at full size: s/step of `ltxv2_diffusers.cli.train` on the 19B AV transformer
(random weights) with cached items at 768x512x121, to set beside `train_step.py`'s figure for the
same flags. The trainer adds what the benchmark's loop leaves out: data loading, logging and the
host bookkeeping between steps (it reads each step's verdict and logs one step late, without waiting).

Writes under `--workdir` (reused when present): an official checkpoint holding the transformer and
the VAEs (`--preset`, random bf16 weights: 40 GB at full size), `--items` cached items in the musubi layout
(`data_loading.write_items`) and a dataset.toml. Then trains `--steps` steps with the flags given
after `--` and prints one `RESULT {json}` line: the median and min of the trainer's own `step_time`
over the steps after the first two (the first compiles), the peak GPU memory and the losses.

    python benchmarks/trainer_full_size.py --workdir /tmp/ws -- --gradient_checkpointing \\
        --blocks_to_swap 40 --blocks_without_recompute 44 --offload_optimizer
    python benchmarks/trainer_full_size.py --preset tiny --steps 4     # smoke test (CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data_loading import SHAPES, write_items  # noqa: E402

PRESETS = {"ltx-2.0": "full", "tiny": "tiny"}  # model preset -> cached item shapes


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ltx-2.0", choices=sorted(PRESETS))
    p.add_argument("--workdir", default=None, help="where model, cache and runs go (default: a temporary folder)")
    p.add_argument("--items", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--num_layers", type=int, default=None,
                   help="fewer transformer blocks than the preset (a quick check of the trainer's GPU path)")
    p.add_argument("--emulate_gib", type=float, default=None,
                   help="cap this process's CUDA memory at this many GiB from the start (a smaller card)")
    p.add_argument("train_flags", nargs=argparse.REMAINDER, help="after --: flags for the trainer")
    a = p.parse_args(argv)
    a.train_flags = [f for f in a.train_flags if f != "--"]
    return a


def write_model(path: Path, preset: str, num_layers: int | None = None) -> None:
    """The transformer and the two VAEs (the trainer normalizes cached latents with their statistics) of
    `preset` with random weights, as an official single-file checkpoint."""
    from ltxv2_diffusers.models.loading import save_official_checkpoint
    from ltxv2_diffusers.models.presets import build_components

    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 19B is minutes on a CPU
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    overrides = {"transformer": {"num_layers": num_layers}} if num_layers else None
    parts = build_components(preset, components=("transformer", "vae", "audio_vae"), torch_dtype=dtype, device=device,
                             overrides=overrides)
    save_official_checkpoint(path, **parts)


def write_dataset(root: Path, items: int, shapes: dict) -> Path:
    cache = root / "cache"
    if not cache.is_dir():
        cache.mkdir(parents=True)
        write_items(str(cache), items, shapes)
    c, f, h, w = shapes["latents"]
    config = root / "dataset.toml"
    config.write_text(f'[general]\nresolution = [{w * 32}, {h * 32}]\nbatch_size = 1\n\n'
                      f'[[datasets]]\nvideo_directory = "{(root / "media").as_posix()}"\n'
                      f'cache_directory = "{cache.as_posix()}"\ntarget_frames = [{(f - 1) * 8 + 1}]\n',
                      encoding="utf-8")
    return config


def main(argv=None) -> dict:
    a = parse(argv)
    from ltxv2_diffusers.cli.train import main as train_main
    from ltxv2_diffusers.training.logging import read_metrics

    root = Path(a.workdir or tempfile.mkdtemp())
    layers = f"-{a.num_layers}layers" if a.num_layers else ""
    model = root / "model" / f"{a.preset}{layers}-random.safetensors"
    if not model.is_file():
        write_model(model, a.preset, a.num_layers)
        if torch.cuda.is_available():  # the 40 GB it built must not stay reserved for the trainer's run
            import gc

            gc.collect()
            torch.cuda.empty_cache()
    config = write_dataset(root, a.items, SHAPES[PRESETS[a.preset]])
    out = root / "run"
    argv = ["--dataset_config", str(config), "--ltx_mode", "av", "--ltxv2_model", str(model),
            "--ltxv2_timestep_format", "flowmatch_1_1000", "--network_dim", str(a.rank), "--network_alpha",
            str(a.rank), "--max_train_steps", str(a.steps), "--output_dir", str(out), "--seed", "0",
            "--log_with", "none", *a.train_flags]
    shutil.rmtree(out, ignore_errors=True)  # a fresh run each time (no resume from an earlier one)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        if a.emulate_gib:
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, a.emulate_gib * 2**30 / total))
    code = train_main(argv)
    rows = list(read_metrics(out / "logs" / "metrics.jsonl")) if (out / "logs" / "metrics.jsonl").is_file() else []
    times = [r["step_time"] for r in rows[2:]]
    res = dict(exit=code, preset=a.preset, steps=len(rows), flags=a.train_flags,
               s_per_step=round(statistics.median(times), 3) if times else None,
               min_s=round(min(times), 3) if times else None, times=[round(t, 3) for t in times],
               first_steps_s=[round(r["step_time"], 1) for r in rows[:2]],
               losses=[round(r["loss"], 4) for r in rows])
    if torch.cuda.is_available():
        res.update(peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1),
                   reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 1), gpu=torch.cuda.get_device_name())
    print("RESULT " + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
