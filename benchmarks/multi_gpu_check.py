"""Two GPUs of one host: the cache job's `with_rank` workers and NCCL training through `accelerate launch`.

1. Video latent cache with two map workers (`--num_proc 2`, one per GPU) against one worker: same
   keys, same latents (fp32 VAE).
2. The tiny `ltxv2-demo` workspace trained for 6 steps by one process with `batch_size = 2` and by
   two NCCL processes with `batch_size = 1` each (musubi's per-process batch): per-step losses and
   the final LoRA must agree (bf16 fast path, so within bf16 tolerance, not bit for bit).

Prints `MULTIGPU {json}` lines; exits non-zero if a check fails. Needs two CUDA devices.

    python benchmarks/multi_gpu_check.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def report(**fields) -> None:
    print("MULTIGPU " + json.dumps(fields), flush=True)


def cache_check(root: Path, device: str = "cuda") -> bool:
    from ltxv2_diffusers.data.config import load_dataset_config
    from ltxv2_diffusers.data.encoders import VideoLatentEncoder
    from ltxv2_diffusers.data.items import list_items
    from ltxv2_diffusers.data.jobs import run_cache_job
    from ltxv2_diffusers.data.stores import CacheStore
    from ltxv2_diffusers.data.synthetic import make_dataset
    from ltxv2_diffusers.models.loading import save_official_checkpoint
    from ltxv2_diffusers.models.presets import build_components

    ckpt = save_official_checkpoint(root / "tiny.safetensors", **build_components("tiny", components=("vae",)))
    config = load_dataset_config(make_dataset(root / "data", num_videos=4, num_frames=25, target_frames=(9, 17)))
    items = list_items(config, "video").items

    def cached_rows(job):
        store = CacheStore(items[0].cache_directory, "video")
        rows = {k: store.read(i)["latents"].float() for k, i in store.index().items()}
        shutil.rmtree(store.path)
        return job, rows

    t = time.perf_counter()
    two, rows2 = cached_rows(run_cache_job(items, VideoLatentEncoder(str(ckpt), device=device, dtype="fp32"),
                                           batch_size=1, num_proc=2))
    two_s = time.perf_counter() - t
    one, rows1 = cached_rows(run_cache_job(items, VideoLatentEncoder(str(ckpt), device=device, dtype="fp32"),
                                           batch_size=4))
    diff = max((rows1[k] - rows2[k]).abs().max().item() for k in rows1) if rows1.keys() == rows2.keys() else None
    ok = two.cached == one.cached == len(rows1) > 0 and diff is not None and diff < 1e-4
    report(check="cache_with_rank", ok=ok, items=len(rows1), cached=[two.cached, one.cached], max_diff=diff,
           two_workers_s=round(two_s, 1))
    return ok


def launch(argv: list[str], processes: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--num_processes", str(processes)]
    cmd += ["--multi_gpu"] if processes > 1 else []
    return subprocess.run([*cmd, str(REPO / "train_ltxv2_lora.py"), *argv], capture_output=True, text=True,
                          cwd=REPO, timeout=900)


def training_check(root: Path) -> bool:
    from ltxv2_diffusers.cli.demo import run_cache_jobs, write_workspace
    from ltxv2_diffusers.training.logging import read_metrics
    from safetensors.torch import load_file

    ws = write_workspace(root / "ws", num_clips=4, batch_size=2)
    run_cache_jobs(ws)
    per_process = ws.dataset_config.with_name("dataset_per_process.toml")
    per_process.write_text(ws.dataset_config.read_text().replace("batch_size = 2", "batch_size = 1"))
    runs = {}
    for name, processes, extra in (("one_process", 1, []), ("two_nccl", 2, ["--dataset_config", str(per_process)])):
        out = root / name
        t = time.perf_counter()
        proc = launch(ws.train_argv(out, 6, ["--network_dim", "4", "--network_alpha", "2", *extra]), processes)
        if proc.returncode:
            report(check="training", run=name, ok=False, stderr=proc.stderr[-3000:])
            return False
        losses = [m["loss"] for m in read_metrics(out / "logs" / "metrics.jsonl")]
        runs[name] = (losses, load_file(str(out / "demo_lora.safetensors")), time.perf_counter() - t)
    (l1, w1, s1), (l2, w2, s2) = runs["one_process"], runs["two_nccl"]
    loss_diff = max(abs(a - b) / abs(a) for a, b in zip(l1, l2))
    weight_diff = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    weight_scale = max(w1[k].float().abs().max().item() for k in w1)
    ok = len(l1) == len(l2) == 6 and w1.keys() == w2.keys() and loss_diff < 2e-2 and weight_diff < 2e-2 * weight_scale
    report(check="training_nccl", ok=ok, losses_one=[round(v, 5) for v in l1], losses_two=[round(v, 5) for v in l2],
           max_rel_loss_diff=loss_diff, max_lora_diff=weight_diff, lora_scale=weight_scale,
           seconds=[round(s1, 1), round(s2, 1)])
    return ok


def main() -> int:
    if torch.cuda.device_count() < 2:
        print(f"needs two CUDA devices, found {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp())
    os.environ.setdefault("OMP_NUM_THREADS", "4")
    ok = cache_check(root / "cache")
    ok = training_check(root / "train") and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
