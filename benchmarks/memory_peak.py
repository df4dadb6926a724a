"""What is alive on the GPU at the peak of a training step, by where it was allocated.

`record(step)` runs one step under the CUDA allocator's history recorder; `peak_breakdown(trace)`
replays the trace to the moment the most memory was allocated and groups what was alive then by the
code that allocated it (a compiled graph's generated file, the block swapper, the optimizer, ...).
Used by `train_step.py --memory_peak`.
"""

from __future__ import annotations

import os

_OURS = ("ltxv2_diffusers", "torchinductor", "diffusers", "benchmarks", "peft")


def site(frames: list[dict]) -> str:
    """A short label for the code that made an allocation: the innermost frame of ours, of a
    compiled graph (generated file, one label per graph), of diffusers or peft."""
    for f in frames:
        name = f.get("filename", "")
        if any(k in name for k in _OURS) and "/torch/" not in name.replace("torchinductor", ""):
            if "torchinductor" in name:  # one label per compiled graph
                return f"compiled graph {os.path.basename(name)[:10]}:{f.get('name')}"
            short = name.split("site-packages/")[-1].split("ltxv2_diffusers/")[-1]
            return f"{short}:{f.get('name')}:{f.get('line')}"
    return "other"


def _replay(trace: list[dict], stop: int | None = None):
    """Replay alloc/free events: (live allocations of the trace, bytes freed that were allocated before
    it, the highest net change, its event index)."""
    live: dict[int, dict] = {}
    net = best = freed_before = 0
    best_at = -1
    for n, event in enumerate(trace if stop is None else trace[:stop + 1]):
        action = event.get("action")
        if action == "alloc":
            live[event["addr"]] = event
            net += event["size"]
        elif action == "free_completed":
            net -= event["size"]
            if live.pop(event["addr"], None) is None:
                freed_before += event["size"]
        if net > best:
            best, best_at = net, n
    return live, freed_before, best, best_at


def peak_breakdown(trace: list[dict], before: int = 0, top: int = 20) -> dict:
    """{'peak_gib': allocated at the trace's peak, 'sites': [[label, GiB, allocations], ...] largest
    first}, for a trace that started with `before` bytes allocated (those count as one 'allocated
    before the step' site, less what the step freed of them). `trace` is
    `torch.cuda.memory._snapshot()['device_traces'][d]`."""
    _, _, best, best_at = _replay(trace)
    live, freed_before, _, _ = _replay(trace, best_at)
    groups: dict[str, list] = {"allocated before the step": [before - freed_before, 0]}
    for event in live.values():
        g = groups.setdefault(site(event.get("frames", [])), [0, 0])
        g[0] += event["size"]
        g[1] += 1
    rows = sorted(([k, round(v[0] / 2**30, 3), v[1]] for k, v in groups.items()), key=lambda r: -r[1])
    return {"peak_gib": round((before + best) / 2**30, 2), "event": best_at, "events": len(trace), "sites": rows[:top]}


def record(step, sync, device: int = 0) -> dict:
    """Run `step()` once under the allocator's history recorder; the breakdown of its peak. Allocations
    made before the step (resident weights, LoRA, kept blocks) count as one site."""
    import torch

    sync()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(enabled="all", context="alloc", stacks="python",
                                             max_entries=2_000_000)
    try:
        step()
        sync()
        snapshot = torch.cuda.memory._snapshot()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    result = peak_breakdown(snapshot["device_traces"][device], before)
    result["before_gib"] = round(before / 2**30, 2)
    return result
