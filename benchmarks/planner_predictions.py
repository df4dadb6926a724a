"""The memory planner's choices for common cards and clip sizes, as a markdown table (CPU only, no weights).

    python benchmarks/planner_predictions.py [--preset ltx-2.0] [--rank 32] [--mode av]

Predictions, not measurements: docs/speed.md and benchmarks/RESULTS.md mark which rows were measured on a
GPU. The step time model counts matmul and attention work and the host link; it leaves out fixed per-step
costs (kernel launches, the optimizer), which dominate one-frame batches, so their times are left out.
"""

from __future__ import annotations

import argparse

from ltxv2_diffusers.models.presets import preset_config
from ltxv2_diffusers.speed.planner import ModelFigures, Workload, plan_memory


def video_tokens(frames: int, height: int, width: int) -> int:
    """Latent tokens of one clip: frames/8+1 x height/32 x width/32, each side floored to whole latents (a
    dataset's resolution must be a multiple of 32: for 720 rows its config error suggests 704, 22 latent rows)."""
    return ((frames - 1) // 8 + 1) * (height // 32) * (width // 32)


# (name, video tokens per item, audio tokens per item); audio at 25 latents/s of 24 fps video
CLIPS = [
    ("768×512×121", video_tokens(121, 512, 768), 126),
    ("960×544×89 (official validation size)", video_tokens(89, 544, 960), 93),
    ("768×512 image", video_tokens(1, 512, 768), 1),
    ("1280×720×241", video_tokens(241, 720, 1280), 252),
]
# (card, budget in GiB): `auto` is the free memory less 1.5 GiB
CARDS = [("H200 141 GB, auto", 137.8), ("H100 80 GB, auto", 77.0), ("`--memory_budget 24`", 24.0),
         ("`--memory_budget 16`", 16.0)]
LAUNCH_BOUND_TOKENS = 1024  # below this many tokens per step, fixed costs dominate the step time


def rows(preset: str, mode: str, rank: int):
    """(clip, card, plan) for every clip and card."""
    figures = ModelFigures.from_config(preset_config(preset)["transformer"], mode, rank)
    for clip, video, audio in CLIPS:
        work = Workload(video_tokens=video, audio_tokens=audio if mode != "video" else 0)
        for card, budget in CARDS:
            yield clip, card, work, plan_memory(figures, work, budget)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="ltx-2.0")
    p.add_argument("--mode", default="av")
    p.add_argument("--rank", type=int, default=32)
    a = p.parse_args(argv)
    print("| clip | card | plan | predicted peak | host memory pinned | predicted s/step |")
    print("|---|---|---|---|---|---|")
    for clip, card, work, plan in rows(a.preset, a.mode, a.rank):
        levers = (f"{plan.base}, {plan.blocks_to_swap} streamed, "
                  + ("whole blocks re-run" if plan.rerun else f"{plan.blocks_without_recompute} without recompute")
                  + (" (their inputs in host memory)" if plan.offload_activations else "")
                  + (", optimizer in host memory" if plan.offload_optimizer else ""))
        fast = work.video_tokens + work.audio_tokens < LAUNCH_BOUND_TOKENS and not plan.blocks_to_swap
        seconds = "— (launch-bound)" if fast else f"≈{plan.seconds:.2f}"
        print(f"| {clip} | {card} | {levers} | {plan.peak_gib:.1f} GiB | {plan.host_gib:.1f} GiB | {seconds} |")


if __name__ == "__main__":
    main()
