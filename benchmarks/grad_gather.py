"""Host time of gathering the LoRA gradients into one flat tensor (`grads_to_master`'s main cost).

Compares a Python reshape per gradient + `torch.cat` (before) with `flat_cat` (torch's C++ flatten,
now), over `--runs` runs of `--per_run` small gradients (the full-size AV LoRA: ~2.3k tensors in
48 block runs), alternating the two so host noise hits both alike. Prints one `RESULT {json}` line.

    python benchmarks/grad_gather.py                  # CPU
    python benchmarks/grad_gather.py --device cuda    # the host time of queueing it on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ltxv2_diffusers.speed.optim.master_weights import flat_cat


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--runs", type=int, default=48)
    p.add_argument("--per_run", type=int, default=48)
    p.add_argument("--repeats", type=int, default=40)
    a = p.parse_args(argv)
    grads = [[torch.ones(8, 4, dtype=torch.bfloat16, device=a.device) for _ in range(a.per_run)] for _ in range(a.runs)]
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    before, now = [], []
    for _ in range(a.repeats):
        sync()
        t = time.perf_counter()
        old = [torch.cat([g.reshape(-1) for g in run]) for run in grads]
        before.append(time.perf_counter() - t)
        sync()
        t = time.perf_counter()
        new = [flat_cat(run) for run in grads]
        now.append(time.perf_counter() - t)
    same = all(torch.equal(x, y) for x, y in zip(old, new))
    res = dict(device=a.device, tensors=a.runs * a.per_run, reshape_cat_ms=round(statistics.median(before) * 1e3, 2),
               flat_cat_ms=round(statistics.median(now) * 1e3, 2), same_values=same)
    print("RESULT " + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
