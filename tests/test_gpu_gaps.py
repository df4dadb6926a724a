"""benchmarks/gpu_gaps.py on a chrome trace in the format torch.profiler writes (kernel, runtime,
host-op and record_function events); the GPU runs that produce real ones are in benchmarks/history.md."""

import json


def _trace(tmp_path):
    def kernel(name, ts, dur, corr):
        return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}

    def launch(ts, corr, name="cudaLaunchKernel"):
        return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": 5, "args": {"correlation": corr}}

    events = [
        {"ph": "X", "cat": "user_annotation", "name": "step/forward+loss", "ts": 0, "dur": 1000},
        {"ph": "X", "cat": "user_annotation", "name": "step/backward", "ts": 1000, "dur": 1000},
        {"ph": "X", "cat": "cpu_op", "name": "aten::to", "ts": 0, "dur": 400},
        {"ph": "X", "cat": "cpu_op", "name": "Torch-Compiled Region: 0/0", "ts": 400, "dur": 600},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 385, "dur": 10,
         "args": {"Input Dims": [[6144, 4096], [4096, 32]]}},
        {"ph": "X", "cat": "cpu_op", "name": "autograd::engine::evaluate_function: CompiledFunctionBackward",
         "ts": 1000, "dur": 900},
        launch(10, 1), kernel("Memcpy HtoD (Pageable -> Device)", 20, 30, 1),
        launch(390, 2), kernel("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_bias_TNT", 400, 500, 2),
        launch(450, 3), kernel("triton_poi_fused_add_0", 900, 100, 3),
        launch(1195, 4), kernel("cudnn_generated_fort_native_sdpa_sm90_flash_bprop", 1200, 600, 4),
        launch(1790, 5, "cudaStreamSynchronize"),
    ]
    for e in events:  # in units of 10 us, so the report's rounded milliseconds are exact
        e["ts"], e["dur"] = e["ts"] * 10, e["dur"] * 10
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    return path


def test_gap_report_attributes_idle_time_to_phase_and_host_op(tmp_path, bench_script):
    report = bench_script("gpu_gaps").gap_report(str(_trace(tmp_path)))
    # kernels at 20-50, 400-900, 900-1000 and 1200-1800: idle 50-400 (launched at 390, while the host
    # ran aten::to in the forward phase) and 1000-1200 (launched at 1195 from the compiled backward)
    assert (report["gpu_span_ms"], report["gpu_busy_ms"], report["gpu_idle_ms"], report["gaps"]) == (17.8, 12.3, 5.5, 2)
    phases = {row["name"]: row["idle_ms"] for row in report["idle_by_phase"]}
    assert phases == {"step/forward+loss": 3.5, "step/backward": 2.0}
    ops = {row["name"]: row["idle_ms"] for row in report["idle_by_host_op"]}
    assert ops == {"aten::to": 3.5, "autograd::engine::evaluate_function: CompiledFunctionBackward": 2.0}
    assert report["largest_gaps"][0]["next_kernel"].startswith("nvjet") and report["largest_gaps"][0]["idle_ms"] == 3.5
    assert report["gpu_ms_by_kind"] == {"attention": 6.0, "matmul": 5.0, "triton (fused elementwise/norms)": 1.0,
                                        "copies": 0.3}
    assert report["sync_calls_ms"] == {"cudaStreamSynchronize": 0.05}
    # the one matmul kernel was launched inside aten::mm, whose recorded shapes name it
    assert report["matmul_by_shape"] == [{"shape": "aten::mm [6144, 4096] x [4096, 32]", "gpu_ms": 5.0, "kernels": 1}]


def test_gap_report_without_gpu_events(tmp_path, bench_script):
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 9}]}))
    assert "error" in bench_script("gpu_gaps").gap_report(str(path))


def test_link_report_finds_the_compute_waiting_on_copies(tmp_path, bench_script):
    """Copies hidden behind kernels cost nothing; a copy with no kernel beside it is the GPU waiting on
    the link. Per GPU-side phase too."""
    events = [
        {"ph": "X", "cat": "gpu_user_annotation", "name": "step/forward+loss", "ts": 0, "dur": 1000},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "step/backward", "ts": 1000, "dur": 1000},
        {"ph": "X", "cat": "kernel", "name": "nvjet_sm90_gemm", "ts": 0, "dur": 1000},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 200, "dur": 500},  # hidden
        {"ph": "X", "cat": "kernel", "name": "cudnn_sdpa_bprop", "ts": 1000, "dur": 300},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pinned -> Device)", "ts": 1100, "dur": 600},
        {"ph": "X", "cat": "kernel", "name": "void at::native::elementwise_kernel<copy>", "ts": 1400, "dur": 100},
        {"ph": "X", "cat": "kernel", "name": "triton_poi_fused_0", "ts": 1600, "dur": 400},
    ]
    for e in events:  # in units of 10 us, so the rounded milliseconds are exact
        e["ts"], e["dur"] = e["ts"] * 10, e["dur"] * 10
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    link = bench_script("gpu_gaps").gap_report(str(path))["link"]
    # backward: the copy runs 1100-1700; compute kernels cover 1100-1300 and 1600-1700 (a copy kernel
    # is not compute), so 1300-1600 is the GPU waiting on the link
    assert (link["copy_ms"], link["copy_only_ms"]) == (11.0, 3.0)
    assert link["by_phase"] == [
        {"name": "step/backward", "gpu_ms": 10.0, "copy_ms": 6.0, "copy_only_ms": 3.0},
        {"name": "step/forward+loss", "gpu_ms": 10.0, "copy_ms": 5.0, "copy_only_ms": 0.0},
    ]


def test_fp8_scaling_kernels_are_counted_apart(bench_script):
    """Inductor names a fused kernel after the ops it holds: the ones with a row absmax carry the fp8
    scalings (names from a profiled full-size fp8 step)."""
    kind = bench_script("gpu_gaps").kernel_kind
    assert kind("triton_red_fused__scaled_mm__to_copy_abs_add_amax_clamp_div_gelu_t_view_38") == \
        "triton with a row absmax (fp8 scaling)"
    assert kind("triton_poi_fused__fused_rms_norm__to_copy_addcmul_mul_neg_slice_transpose_unsqueeze_view_3") == \
        "triton (fused elementwise/norms)"
    assert kind("nvjet_sm90_qqtst_128x128_128x6_1x1_h_bz_coopA_algo2_ovscale_TNT") == "matmul"


def test_containing_events_and_covered_time_match_a_plain_search(bench_script):
    """The indexes that keep the report fast on a full-size step (~10^5 host events) give what scanning every
    event gives: on random nested host events in two threads, the outermost and innermost event containing
    a moment, and the time sorted intervals cover inside a window."""
    import random

    gaps = bench_script("gpu_gaps")
    rng = random.Random(0)
    events = []

    def nest(tid, lo, hi, depth):
        t = lo
        while t < hi and depth < 4:
            dur = rng.uniform(1, (hi - t))
            events.append({"ts": t, "dur": dur, "tid": tid, "pid": 1, "name": f"op{len(events)}"})
            nest(tid, t + dur * 0.1, t + dur * 0.9, depth + 1)
            t += dur + rng.uniform(0, 5)

    nest(1, 0, 1000, 0)
    nest(2, 300, 1500, 0)
    index = gaps._Nested(events)
    for ts in [rng.uniform(-10, 1600) for _ in range(500)]:
        containing = [e for e in events if e["ts"] <= ts <= e["ts"] + e["dur"]]
        outer = max(containing, key=lambda e: e["dur"]) if containing else None
        inner = min(containing, key=lambda e: e["dur"]) if containing else None
        assert index.outermost(ts) is outer and index.innermost(ts) is inner

    union = gaps._union([(a, a + rng.uniform(0, 20)) for a in (rng.uniform(0, 1000) for _ in range(200))])
    covered = gaps._Covered(union)
    for lo, hi in [sorted((rng.uniform(-50, 1050), rng.uniform(-50, 1050))) for _ in range(300)]:
        plain = sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in union)
        assert abs(covered(lo, hi) - plain) < 1e-9
