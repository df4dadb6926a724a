"""The trainer itself on a GPU: the tiny `ltxv2-demo` workspace trained for 6 steps through the
trainer's CLI (five blocks, so that blocks can be swapped): as the memory planner chooses with the
GPU's free memory, with hand-set swapped blocks and blocks without recompute
(also with --offload_optimizer), the planner off, and the low-memory path; prints one `TRAINER {json}`
line per run (exit code, seconds, per-step losses, previews written; the planned run also samples
previews through LTX2Pipeline). On a CPU the CUDA-only runs are refused.

    python benchmarks/trainer_gpu_check.py [RUN ...]
"""
import json, sys, tempfile, time
from pathlib import Path
import torch
from ltxv2_diffusers.cli.demo import run_cache_jobs, write_workspace
from ltxv2_diffusers.cli.train import main as train_main

root = Path(tempfile.mkdtemp())
ws = write_workspace(root, num_clips=2, num_layers=5)
run_cache_jobs(ws)
previews = ["--sample_prompts", str(ws.prompts), "--sample_every_n_steps", "6"]
runs = {"fast": ["--memory_budget", "off"], "planned": [*previews],
        "swap_norecompute": ["--gradient_checkpointing", "--blocks_to_swap", "2", "--blocks_without_recompute", "2",
                             *previews],
        # same as swap_norecompute with the optimizer in host memory (its losses should match), saving mid-run
        "offload": ["--gradient_checkpointing", "--blocks_to_swap", "2", "--blocks_without_recompute", "2",
                    "--offload_optimizer", "--save_every_n_steps", "3", *previews],
        "low_memory": ["--gradient_checkpointing", "--low_memory", "--blocks_to_swap", "2"]}
only = sys.argv[1:]  # run names to run; all when none are given
for name, extra in runs.items():
    if only and name not in only:
        continue
    torch._dynamo.reset()
    out = root / name
    t = time.perf_counter()
    code = train_main(ws.train_argv(out, 6, extra))
    rows = [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()] if (out / "logs" / "metrics.jsonl").exists() else []
    losses = [round(r["loss"], 5) for r in rows if "loss" in r]
    print("TRAINER", json.dumps({"run": name, "exit": code, "s": round(time.perf_counter() - t, 1), "losses": losses,
                                 "lora": (out / "demo_lora.safetensors").is_file(),
                                 "previews": len(list((out / "samples").glob("*.mp4")))}), flush=True)
