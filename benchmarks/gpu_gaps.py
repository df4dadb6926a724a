"""Where a profiled step leaves the GPU idle, from a torch.profiler chrome trace.

The GPU is idle between kernels when the host has not launched the next one yet (dispatch-bound
code) or waits on a synchronization. For every idle gap this finds the kernel that ended it, the host
time its launch was issued, and the outermost host op and `record_function` phase running then, and
sums the idle time per phase and per op. It also measures how long the host link copies while no
compute kernel runs (`link_report`): whether a swapped model waits on the link. Used by
`benchmarks/train_step.py --profile`.

    python benchmarks/gpu_gaps.py trace.json
"""

from __future__ import annotations

import bisect
import collections
import json
import sys

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
SYNC_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaStreamWaitEvent")


KERNEL_KINDS = (  # first match wins
    ("attention", ("sdpa", "fmha", "flash", "attention")),
    ("matmul", ("nvjet", "gemm", "cutlass", "xmma", "cublas")),
    ("triton with a row absmax (fp8 scaling)", ("amax",)),
    ("triton (fused elementwise/norms)", ("triton_",)),
    ("copies", ("memcpy", "memset", "copy")),
    ("optimizer", ("adam", "multi_tensor")),
)


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, needles in KERNEL_KINDS:
        if any(n in low for n in needles):
            return kind
    return "other (eager elementwise, reductions)"


class _Nested:
    """Host events of a trace (nested within each thread, as the profiler records them), indexed to find
    the outermost or innermost one that contains a moment in a logarithmic search and a walk up its
    enclosing events, not a scan of everything before it (a full-size step has ~10^5 of them)."""

    def __init__(self, events: list[dict]):
        self.threads = []
        by_thread = collections.defaultdict(list)
        for e in events:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
        for evs in by_thread.values():
            evs.sort(key=lambda e: (e["ts"], -e["dur"]))  # an enclosing event before those it contains
            parent, stack = [], []
            for i, e in enumerate(evs):
                while stack and evs[stack[-1]]["ts"] + evs[stack[-1]]["dur"] < e["ts"]:
                    stack.pop()
                parent.append(stack[-1] if stack else -1)
                stack.append(i)
            self.threads.append((evs, [e["ts"] for e in evs], parent))

    def _chain(self, ts: float):
        """Per thread, the events containing `ts`, innermost first."""
        for evs, starts, parent in self.threads:
            i = bisect.bisect_right(starts, ts) - 1
            chain = []
            while i >= 0:
                e = evs[i]
                if e["ts"] + e["dur"] >= ts:
                    chain.append(e)
                i = parent[i]
            yield chain

    def outermost(self, ts: float) -> dict | None:
        """The longest event that contains `ts`."""
        found = [chain[-1] for chain in self._chain(ts) if chain]
        return max(found, key=lambda e: e["dur"]) if found else None

    def innermost(self, ts: float) -> dict | None:
        """The shortest event that contains `ts`."""
        found = [chain[0] for chain in self._chain(ts) if chain]
        return min(found, key=lambda e: e["dur"]) if found else None


_MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm")


def _shape_key(op: dict | None) -> str:
    if op is None:
        return "(launched outside an aten matmul op)"
    dims = op.get("args", {}).get("Input Dims")
    if not dims:
        return f"{op['name']} (no shapes recorded)"
    return f"{op['name']} " + " x ".join(str(d) for d in dims if d)


def _union(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint intervals covering the same time as `intervals`."""
    out: list[tuple[float, float]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


class _Covered:
    """Time covered by sorted, disjoint intervals inside any [lo, hi], by binary search over their running
    total (a step has ~10^5 kernels, asked about for each copy)."""

    def __init__(self, union: list[tuple[float, float]]):
        self.starts = [a for a, _ in union]
        self.ends = [b for _, b in union]
        self.total = [0.0]
        for a, b in union:
            self.total.append(self.total[-1] + b - a)

    def _upto(self, t: float) -> float:
        """Covered time before `t`."""
        i = bisect.bisect_right(self.starts, t)  # intervals starting at or before t
        if i == 0:
            return 0.0
        return self.total[i - 1] + min(t, self.ends[i - 1]) - self.starts[i - 1]

    def __call__(self, lo: float, hi: float) -> float:
        return max(0.0, self._upto(hi) - self._upto(lo)) if hi > lo else 0.0


def link_report(events: list[dict]) -> dict:
    """How much of the time the host link copies, no compute kernel runs: the GPU waiting on the link
    (block swapping, offloaded optimizer state) rather than the link hiding behind compute. Overall and
    per GPU-side `record_function` range (`gpu_user_annotation`, e.g. step/backward)."""
    copies = _union([(e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "gpu_memcpy" and "dur" in e])
    compute = _union([(e["ts"], e["ts"] + e["dur"]) for e in events
                      if e.get("cat") == "kernel" and "dur" in e and kernel_kind(e["name"]) != "copies"])
    copying, computing = _Covered(copies), _Covered(compute)

    def copy_only(lo: float, hi: float) -> float:
        total = 0.0
        for a, b in copies[max(0, bisect.bisect_right(copying.starts, lo) - 1):]:
            if a >= hi:
                break
            a, b = max(a, lo), min(b, hi)
            if b > a:
                total += (b - a) - computing(a, b)
        return total

    span = (min(a for a, _ in copies + compute), max(b for _, b in copies + compute)) if copies or compute else (0, 0)
    phases = collections.defaultdict(lambda: [0.0, 0.0, 0.0])  # copying, copy-only, length
    for e in events:
        if e.get("cat") == "gpu_user_annotation" and "dur" in e:
            lo, hi = e["ts"], e["ts"] + e["dur"]
            row = phases[e["name"]]
            row[0] += copying(lo, hi)
            row[1] += copy_only(lo, hi)
            row[2] += hi - lo
    return {
        "copy_ms": round(copying(*span) / 1e3, 1),
        "copy_only_ms": round(copy_only(*span) / 1e3, 1),
        "by_phase": [{"name": k, "gpu_ms": round(v[2] / 1e3, 1), "copy_ms": round(v[0] / 1e3, 1),
                      "copy_only_ms": round(v[1] / 1e3, 1)} for k, v in sorted(phases.items())],
    }


def gap_report(trace_path: str, min_gap_us: float = 5.0, top: int = 12) -> dict:
    """Idle-GPU summary of a chrome trace: totals, per phase, per host op and the largest gaps."""
    with open(trace_path) as f:
        events = json.load(f)["traceEvents"]
    gpu = sorted((e for e in events if e.get("cat") in GPU_CATS and "dur" in e), key=lambda e: e["ts"])
    if not gpu:
        return {"error": "no GPU events in the trace"}
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") == "cuda_runtime" and "correlation" in e.get("args", {})}
    ops = [e for e in events if e.get("cat") == "cpu_op" and "dur" in e]
    phases = _Nested([e for e in events if e.get("cat") == "user_annotation" and "dur" in e])
    host_ops = _Nested(ops)

    busy_end = gpu[0]["ts"] + gpu[0]["dur"]
    busy = 0.0
    gaps = []
    cur_start = gpu[0]["ts"]
    for e in gpu[1:]:
        if e["ts"] > busy_end:
            busy += busy_end - cur_start
            if e["ts"] - busy_end >= min_gap_us:
                gaps.append((busy_end, e))
            cur_start = e["ts"]
        busy_end = max(busy_end, e["ts"] + e["dur"])
    busy += busy_end - cur_start
    span = busy_end - gpu[0]["ts"]

    per_phase: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    per_op: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    largest = []
    for start, nxt in gaps:
        idle = nxt["ts"] - start
        launch = launches.get(nxt.get("args", {}).get("correlation"))
        t = launch["ts"] if launch else nxt["ts"]
        phase = phases.outermost(t)
        op = host_ops.outermost(t)
        pname = phase["name"] if phase else "(no phase)"
        oname = op["name"] if op else "(no host op)"
        for table, key in ((per_phase, pname), (per_op, oname)):
            table[key][0] += idle
            table[key][1] += 1
        largest.append((idle, pname, oname, nxt["name"][:60], launch["name"] if launch else ""))
    kinds = collections.Counter()
    matmul_ops = _Nested([e for e in ops if e["name"].startswith(_MATMUL_OPS)])
    by_shape: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for e in gpu:
        kind = kernel_kind(e["name"])
        kinds[kind] += e["dur"]
        if kind == "matmul":  # which matmul shapes the GPU time goes to (needs record_shapes=True)
            launch = launches.get(e.get("args", {}).get("correlation"))
            op = matmul_ops.innermost(launch["ts"]) if launch else None
            row = by_shape[_shape_key(op)]
            row[0] += e["dur"]
            row[1] += 1
    syncs = collections.Counter()
    for e in events:
        if e.get("cat") == "cuda_runtime" and e.get("name", "").startswith(SYNC_CALLS):
            syncs[e["name"]] += e.get("dur", 0)

    def table(d):
        return [{"name": k, "idle_ms": round(v[0] / 1e3, 2), "gaps": v[1]}
                for k, v in sorted(d.items(), key=lambda kv: -kv[1][0])][:top]

    largest.sort(reverse=True)
    return {
        "gpu_span_ms": round(span / 1e3, 1),
        "gpu_busy_ms": round(busy / 1e3, 1),
        "gpu_idle_ms": round((span - busy) / 1e3, 1),
        "gaps": len(gaps),
        "gpu_ms_by_kind": {k: round(v / 1e3, 1) for k, v in kinds.most_common()},
        "idle_by_phase": table(per_phase),
        "idle_by_host_op": table(per_op),
        "largest_gaps": [{"idle_ms": round(i / 1e3, 2), "phase": p, "host_op": o, "next_kernel": k, "launch": l}
                         for i, p, o, k, l in largest[:top]],
        "sync_calls_ms": {k: round(v / 1e3, 2) for k, v in syncs.most_common(8)},
        "matmul_by_shape": [{"shape": k, "gpu_ms": round(v[0] / 1e3, 2), "kernels": v[1]}
                            for k, v in sorted(by_shape.items(), key=lambda kv: -kv[1][0])][:top],
        "link": link_report(events),
    }


def print_report(report: dict) -> None:
    print("GAPS " + json.dumps(report), flush=True)
    if "error" in report:
        return
    print(f"GPU span {report['gpu_span_ms']} ms, busy {report['gpu_busy_ms']} ms, idle {report['gpu_idle_ms']} ms "
          f"in {report['gaps']} gaps")
    print("  GPU time by kernel kind: " + ", ".join(f"{k} {v} ms" for k, v in report["gpu_ms_by_kind"].items()))
    for key in ("idle_by_phase", "idle_by_host_op"):
        print(f"  {key}:")
        for row in report[key]:
            print(f"    {row['idle_ms']:9.2f} ms  {row['gaps']:6d}  {row['name'][:90]}")
    print("  matmul GPU time by shape:")
    for row in report["matmul_by_shape"]:
        print(f"    {row['gpu_ms']:9.2f} ms  {row['kernels']:6d}  {row['shape'][:100]}")
    link = report["link"]
    print(f"  host link: copying {link['copy_ms']} ms, of which {link['copy_only_ms']} ms with no compute kernel running")
    for row in link["by_phase"]:
        print(f"    {row['name'][:40]:40s}  {row['gpu_ms']:8.1f} ms GPU  copying {row['copy_ms']:7.1f}  "
              f"copy-only {row['copy_only_ms']:7.1f}")
    print("  largest gaps:")
    for row in report["largest_gaps"]:
        print(f"    {row['idle_ms']:9.2f} ms  {row['phase'][:30]:30s}  {row['host_op'][:50]:50s}  {row['next_kernel']}")


if __name__ == "__main__":
    print_report(gap_report(sys.argv[1]))
