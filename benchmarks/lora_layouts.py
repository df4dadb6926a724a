"""What a rank-r LoRA costs beside the frozen projections that share one input, and what two other
layouts of the same arithmetic would save: forward + backward of one attention's q/k/v (or k/v).

Layouts, each eager and compiled (median GPU time per forward + backward, in microseconds):
- `base`: the frozen projections alone (no LoRA);
- `peft_like`: base(x) + B(A(x)) * scale per projection, as peft runs it;
- `shared_A`: one down-projection GEMM for all projections on the shared input, then split;
- `shared_A_addmm`: the same, each up-projection added in the base GEMM's epilogue (`addmm`; a scale
  other than 1 would be folded into the up-projection weight).

    python benchmarks/lora_layouts.py [--tokens 6144 --width 4096 --rank 32 --projections 3]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F


def median_us(fn, n: int = 30) -> float:
    """Median microseconds of `fn()` between CUDA events, after a warm-up."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return round(times[n // 2] * 1000, 1)


def layouts(weights, biases, downs, ups, rank: int, scale: float = 1.0):
    def base(x):
        return [F.linear(x, w, b) for w, b in zip(weights, biases)]

    def peft_like(x):
        return [F.linear(x, w, b) + F.linear(F.linear(x, a), u) * scale
                for w, b, a, u in zip(weights, biases, downs, ups)]

    def shared_A(x):
        hs = F.linear(x, torch.cat(downs)).split(rank, dim=-1)
        return [F.linear(x, w, b) + F.linear(h, u) * scale for w, b, h, u in zip(weights, biases, hs, ups)]

    def shared_A_addmm(x):
        hs = F.linear(x, torch.cat(downs)).split(rank, dim=-1)
        flat = x.flatten(0, 1)
        return [torch.addmm(F.linear(flat, w, b), h.flatten(0, 1), u.t()).view(x.shape[0], x.shape[1], -1)
                for w, b, h, u in zip(weights, biases, hs, ups)]

    return {"base": base, "peft_like": peft_like, "shared_A": shared_A, "shared_A_addmm": shared_A_addmm}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tokens", type=int, default=6144)
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--projections", type=int, default=3)
    a = p.parse_args(argv)
    dev, dt, c, r = "cuda", torch.bfloat16, a.width, a.rank
    torch.manual_seed(0)
    x = torch.randn(1, a.tokens, c, device=dev, dtype=dt, requires_grad=True)
    weights = [torch.randn(c, c, device=dev, dtype=dt) * c ** -0.5 for _ in range(a.projections)]
    biases = [torch.randn(c, device=dev, dtype=dt) for _ in range(a.projections)]
    downs = [(torch.randn(r, c, device=dev, dtype=dt) * c ** -0.5).requires_grad_() for _ in range(a.projections)]
    ups = [(torch.randn(c, r, device=dev, dtype=dt) * 0.01).requires_grad_() for _ in range(a.projections)]
    grads = [torch.randn(1, a.tokens, c, device=dev, dtype=dt) for _ in range(a.projections)]
    res = {"tokens": a.tokens, "width": c, "rank": r, "projections": a.projections, "gpu": torch.cuda.get_device_name()}
    for name, fn in layouts(weights, biases, downs, ups, r).items():
        for compiled in (False, True):
            run = torch.compile(fn) if compiled else fn
            res[f"{name}_{'compiled' if compiled else 'eager'}_us"] = median_us(
                lambda: torch.autograd.backward(run(x), grads))
            for t in [x] + downs + ups:
                t.grad = None
    print("RESULT " + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
