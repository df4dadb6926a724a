"""Host <-> GPU copy bandwidth with pinned memory, alone and while the GPU multiplies matrices.

Streaming weights or activations through host memory during a step only pays if the copies hide
behind compute; this prints the GB/s the link gives (host-to-device, device-to-host, both at once)
and how much a concurrent bf16 matmul loop slows down while copies run on side streams; and one
host-to-device copy split over several streams (the swapper copies each block in one piece).

    python benchmarks/host_link.py [--gib 1] [--streams 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def timed(fn, repeat: int = 5) -> float:
    """Median seconds of `fn()` (synchronized)."""
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gib", type=float, default=1.0)
    p.add_argument("--streams", default="1,2,4,8", help="split the host-to-device copy over this many streams")
    a = p.parse_args(argv)
    n = int(a.gib * 2**30) // 2
    host = torch.empty(n, dtype=torch.bfloat16).pin_memory()
    host_back = torch.empty_like(host).pin_memory()
    dev = torch.empty(n, dtype=torch.bfloat16, device="cuda")
    dev2 = torch.empty_like(dev)
    h2d_stream, d2h_stream = torch.cuda.Stream(), torch.cuda.Stream()
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    nbytes = n * 2

    def h2d():
        with torch.cuda.stream(h2d_stream):
            dev.copy_(host, non_blocking=True)

    def d2h():
        with torch.cuda.stream(d2h_stream):
            host_back.copy_(dev2, non_blocking=True)

    def matmuls(k=40):
        for _ in range(k):
            x @ y

    res = {"gib": a.gib, "gpu": torch.cuda.get_device_name()}
    res["h2d_gbps"] = round(nbytes / timed(h2d) / 1e9, 1)
    res["d2h_gbps"] = round(nbytes / timed(d2h) / 1e9, 1)
    both = timed(lambda: (h2d(), d2h()))
    res["both_directions_gbps_each"] = round(nbytes / both / 1e9, 1)
    alone = timed(matmuls)
    with_copies = timed(lambda: (h2d(), d2h(), matmuls()))
    res["matmul_alone_ms"] = round(alone * 1e3, 1)
    res["matmul_with_copies_ms"] = round(with_copies * 1e3, 1)
    res["matmul_tflops_alone"] = round(40 * 2 * 8192**3 / alone / 1e12)
    streams = [torch.cuda.Stream() for _ in range(max(int(k) for k in a.streams.split(",")))]

    def h2d_split(k):
        step, cur = n // k, torch.cuda.current_stream()
        for i, s in enumerate(streams[:k]):
            s.wait_stream(cur)
            with torch.cuda.stream(s):
                dev[i * step:(i + 1) * step].copy_(host[i * step:(i + 1) * step], non_blocking=True)
        for s in streams[:k]:
            cur.wait_stream(s)

    # timed() synchronizes around each call: timing with events on one stream while the copies run on
    # others let successive calls overlap and reported impossible rates
    res["h2d_gbps_by_streams"] = {k: round(n // int(k) * int(k) * 2 / timed(lambda: h2d_split(int(k))) / 1e9, 1)
                                  for k in a.streams.split(",")}
    print("RESULT " + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
