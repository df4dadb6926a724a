"""Benchmark the project's own LoRA training step (adapter, loss, LoRA, optimizer) on LTX-2.

Full size (default): the 18.88 B AV transformer with random weights, 768x512x121 frames at 24 fps
(6144 video tokens), matching audio (126 tokens), text length 1024, rank-32 LoRA on the attentions
(`--ltx_mode av` targets), batch 1. Prints s/step (median after warm-up), peak GPU memory, achieved
TFLOP/s and the fraction of a bf16 matmul ceiling measured in the same run, as one `RESULT {json}`
line. Run it in the same device call as shared/bench/naive_baseline.py and compare the ratio.

    python benchmarks/train_step.py                       # default fast path
    python benchmarks/train_step.py --low_memory          # int8 base + block swap (24 GiB mode)
    python benchmarks/train_step.py --fp8_base            # fp8 base weights and matmuls
    python benchmarks/train_step.py --preset tiny --device cpu --steps 2 --warmup 1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch._functorch.config
import torch._inductor.config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sibling scripts: gpu_gaps, memory_peak

from ltxv2_diffusers.speed.quant import fp8  # noqa: E402


def add_model_and_clip_arguments(p: argparse.ArgumentParser) -> None:
    """The model and batch options the step benchmarks share (full-size LTX-2 AV at 768x512x121 by default)."""
    p.add_argument("--preset", default="ltx-2.0")
    p.add_argument("--device", default="cuda")
    p.add_argument("--mode", default="av", choices=["video", "av", "audio"])
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=768)
    p.add_argument("--fps", type=float, default=24.0)
    p.add_argument("--text_len", type=int, default=1024)


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_and_clip_arguments(p)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--num_layers", type=int, default=None,
                   help="fewer transformer blocks than the preset (per-block costs, variants that need more memory)")
    p.add_argument("--steps", type=int, default=8,
                   help="timed steps per variant, then as many back to back (single steps on an H100 host vary "
                        "by 20-60 ms, so few steps cannot rank settings closer than that)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--speed", default="default", choices=["naive", "default"],
                   help="naive: autocast + fp32 LoRA, eager; default: the trainer's fast path")
    p.add_argument("--attention_backend", default=None, help="diffusers attention backend, e.g. _native_cudnn")
    p.add_argument("--low_memory", action="store_true", help="int8 base weights + --blocks_to_swap")
    p.add_argument("--fp8_base", action="store_true", help="fp8 base weights and matmuls (speed/quant/fp8.py)")
    p.add_argument("--fp8_scaling", default=None, choices=fp8.SCALINGS,
                   help="how the fp8 matmuls take their scales (speed/quant/fp8.py's `scaling`; default: its default)")
    p.add_argument("--blocks_to_swap", type=int, default=None)
    p.add_argument("--no_compile", action="store_true")
    p.add_argument("--offload_optimizer", action="store_true",
                   help="fp32 masters and AdamW moments in pinned CPU memory, applied during the next forward")
    p.add_argument("--offload_activations", action="store_true",
                   help="with whole-block re-runs ('ckpt'): each block's input hidden states in pinned CPU memory "
                        "between forward and backward")
    p.add_argument("--backward_prefetch", type=int, default=None, help="swapped blocks fetched ahead in backward")
    p.add_argument("--blocks_without_recompute", type=int, default=0,
                   help="with compiled recompute: the last N blocks keep every activation instead")
    p.add_argument("--recompute", default=None,
                   help="comma list, measured one after the other on the same model: 'keep' (the default: compiled "
                        "blocks recompute, keeping what keep_attention_policy says), 'ckpt' (diffusers' per-block "
                        "gradient checkpointing around compiled blocks) or a number in [0, 1] (compiled blocks "
                        "recompute within that activation memory budget) or 'none' (no recomputation); see speed/setup.py. Suffix '+cg' "
                        "compiles with CUDA graphs, '+combo' with inductor's combo kernels, '+cdt' with its coordinate-descent tuning of elementwise and reduction kernels, '+cpp' with its C++ wrapper, '+burst' fetches all D blocks at once where backward starts (the swapper ramps up from one), '+gc' times the steps without the trainer's gc.freeze() (full garbage collections walk the model's objects), '+keepall' lets blocks without recompute keep what the partitioner keeps by default (not keep_matmul_outputs_policy), '+nofo' has backward fetch the text keys' and values' weights of swapped blocks too (as before they were left to the forward), '@S/K[/D][/spread]' swaps S blocks, "
                        "exempts K blocks from recomputation (spread, or the last K) and prefetches D blocks in "
                        "backward (instead of --blocks_to_swap/--blocks_without_recompute/--backward_prefetch)")
    p.add_argument("--memory_budget", default=None,
                   help="'auto' or GiB: let the trainer's memory planner choose swapping, recomputation, optimizer "
                        "offload and the base dtype (the flags above that it would choose are ignored, but "
                        "--fp8_base is kept); prints the plan")
    p.add_argument("--emulate_gib", type=float, default=None,
                   help="cap this process's CUDA memory at this many GiB (torch.cuda.set_per_process_memory_fraction) "
                        "once the model is placed, to emulate a smaller card")
    p.add_argument("--host_gib", type=float, default=None,
                   help="with --memory_budget: plan as if this process had this much free host memory (a smaller "
                        "host: int8 blocks quantized on the device and streamed)")
    p.add_argument("--compile_mode", default=None, help="torch.compile mode for the blocks, e.g. reduce-overhead")
    p.add_argument("--profile", action="store_true", help="print a kernel-time table of one step")
    p.add_argument("--memory_trace", action="store_true",
                   help="print allocated GiB at every block's forward and backward in one step (where the peak is)")
    p.add_argument("--lead_trace", action="store_true",
                   help="print how far ahead of the GPU the host is at every block's forward and backward in one "
                        "step (near 0: host-bound there), and the allocator's sync counters")
    p.add_argument("--memory_peak", action="store_true",
                   help="print what is alive at one step's peak, grouped by the code that allocated it "
                        "(CUDA allocator history, benchmarks/memory_peak.py)")
    p.add_argument("--results", default=None,
                   help="also append every RESULT/MEMTRACE/MEMPEAK line to this file (a log's tail may be cut)")
    p.add_argument("--flops_cache", default=None,
                   help="a JSON file of forward FLOP counts by model and clip: read the count from it, or count and "
                        "add it (the eager counting forward takes ~15 s of a full-size run)")
    p.add_argument("--tag", default="")
    return p.parse_args(argv)


def cached_flops(a, count) -> float:
    """The forward's FLOP count for this model and clip: from `--flops_cache` where it holds them, else
    `count()`, then stored there."""
    if not a.flops_cache:
        return count()
    key = json.dumps([a.preset, a.mode, a.num_layers, a.rank, a.frames, a.height, a.width, a.fps, a.text_len])
    try:
        with open(a.flops_cache, encoding="utf-8") as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    if key not in table:
        table[key] = count()
        tmp = f"{a.flops_cache}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(table, f)
        os.replace(tmp, a.flops_cache)
    return table[key]


def _tail(extra: str) -> int | None:
    """'tailN': the last N blocks stay resident when swapping (`spread_blocks(resident_tail=N)`, default 2)."""
    return int(extra[4:]) if extra.startswith("tail") and extra[4:].isdigit() else None


def parse_variant(v: str) -> tuple[str, list[str], list[int | None] | None, str | None]:
    """A `--recompute` variant: 'keep' | 'ckpt' | 'none' | a budget, with '+cg' (CUDA graphs), '+combo'
    (inductor combo kernels), '+cdt' (inductor coordinate-descent tuning), '+cpp' (inductor's C++ wrapper), '+burst' (no ramp of the backward
    prefetch), '+gc' (no gc.freeze() before the timed steps, unlike the trainer), '+keepall' (blocks without
    recompute keep what the partitioner keeps by default, as before `keep_matmul_outputs_policy`), '+nofo'
    (backward fetches whole swapped blocks, `SpeedOptions.split_forward_only` off) or
    '+tailN' (the last N blocks stay resident instead of 2 when blocks are swapped) extras anywhere, and optionally
    '@S/K[/D][/last|/spread]' (blocks swapped / without recompute / backward prefetch / where the
    blocks without recompute are). Returns (base, extras, [S, K, D] or None, placement or None)."""
    head, _, swap = v.partition("@")
    base, *extras = head.split("+")
    swap, *more = swap.split("+") if swap else ("",)
    fields = swap.split("/") if swap else []
    placement = fields.pop() if fields and fields[-1] in ("last", "spread") else None
    try:
        numbers = [int(x) for x in fields]
    except ValueError:
        numbers = []
    if fields and not 2 <= len(numbers) <= 3:
        raise ValueError(f"--recompute variant {v!r}: after '@' give S/K[/D][/last|/spread], e.g. keep@44/28/2/spread")
    unknown = {x for x in extras + more if x not in {"cg", "combo", "cpp", "burst", "gc", "keepall", "nofo", "cdt"} and _tail(x) is None}
    if unknown:
        raise ValueError(f"--recompute variant {v!r}: unknown extras {sorted(unknown)} (cg, combo, cpp, burst, gc, keepall, nofo, cdt, tailN)")
    counts = (numbers + [None])[:3] if numbers else None
    return base, extras + more, counts, placement


_T0 = time.perf_counter()


def progress(what: str) -> None:
    """One line on where the run is, so a run cut off by its time limit shows which phase took the time."""
    print(f"[train_step +{time.perf_counter() - _T0:.1f} s] {what}", flush=True)


def report(a, kind: str, record: dict) -> None:
    """Print one `KIND {json}` line, and append it to `--results` when given."""
    line = f"{kind} {json.dumps(record)}"
    print(line, flush=True)
    if a.results:
        with open(a.results, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def matmul_ceiling(device: str) -> float | None:
    """Measured bf16 matmul TFLOP/s on this GPU (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    x = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        x @ y
    torch.cuda.synchronize()
    return 2 * 8192**3 * 20 / (time.perf_counter() - t) / 1e12


def make_batch(adapter, a, device):
    from ltxv2_diffusers.models.adapter import context_widths

    tc = adapter.transformer.config
    f, h, w = (a.frames - 1) // 8 + 1, a.height // 32, a.width // 32
    audio_frames = int(round(a.frames / a.fps * 25))
    g = torch.Generator("cpu").manual_seed(0)
    # LTX-2.0 takes caption-wide contexts, 2.3 / 2.5 the connectors' per-modality widths.
    ctx = sum(context_widths(tc))
    return {
        "latents": torch.randn(1, tc.in_channels, f, h, w, generator=g).to(device),
        "audio_latents": torch.randn(1, 8, audio_frames, tc.audio_in_channels // 8, generator=g).to(device),
        "audio_lengths": torch.tensor([audio_frames], device=device),
        "text": torch.randn(1, a.text_len, ctx, generator=g).to(device),
        "text_mask": torch.ones(1, a.text_len, dtype=torch.bool, device=device),
        "fps": torch.tensor([a.fps], device=device),
        "keys": ["bench"],
    }


class PhaseClock:
    """CUDA events and host clocks at the step's phase boundaries.

    No profiler: its per-kernel overhead slows the host and invents idle GPU time. A phase whose host
    time reaches its GPU time is host-bound; GPU time above the kernels' own time is waiting (for the
    host or for a copy)."""

    def __init__(self, cuda: bool):
        self.cuda, self.active, self.steps, self.current = cuda, False, [], []

    def mark(self, name: str) -> None:
        if not self.active:
            return
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        self.current.append((name, event, time.perf_counter()))

    def end_step(self) -> None:
        if self.active and self.current:
            self.steps.append(self.current)
        self.current = []

    def summary(self) -> dict:
        """Median GPU and host milliseconds per phase (call after a synchronize)."""
        out = {}
        for i, (name, _, _) in enumerate(self.steps[0][1:], start=1):
            host = [(s[i][2] - s[i - 1][2]) * 1e3 for s in self.steps]
            row = {"host_ms": round(statistics.median(host), 1)}
            if self.cuda:
                row["gpu_ms"] = round(statistics.median(s[i - 1][1].elapsed_time(s[i][1]) for s in self.steps), 1)
            out[name] = row
        return out


def measure(a, step, sync, cuda: bool, clock: PhaseClock | None = None) -> dict:
    """Warm up, then time `a.steps` steps; s/step is the median. Then `a.steps` more steps without a
    synchronize between them, as the trainer runs (s_per_step_pipelined: their mean;
    s_per_step_pipelined_median: the median interval between their starts on the GPU)."""
    losses = []
    t = time.perf_counter()
    for i in range(a.warmup):
        losses.append(float(step(i).detach()))
        progress(f"warm-up step {i + 1} of {a.warmup} done")
    sync()
    warmup_s = time.perf_counter() - t
    if cuda:
        torch.cuda.empty_cache()  # the previous variant's cached blocks
        torch.cuda.reset_peak_memory_stats()
    times = []
    if clock is not None:
        clock.active, clock.steps = True, []
    for i in range(a.steps):
        sync()
        t = time.perf_counter()
        loss = step(a.warmup + i)
        sync()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - t)
    progress(f"{a.steps} timed steps: median {statistics.median(times):.3f} s")
    phases = None
    if clock is not None:
        clock.active = False
        phases = clock.summary()
    t = time.perf_counter()
    starts = []  # device-side marks where each pipelined step's work begins (and one after the last)
    pipelined = []
    for i in range(a.steps + 1):
        if cuda:
            starts.append(torch.cuda.Event(enable_timing=True))
            starts[-1].record()
        if i < a.steps:
            pipelined.append(step(a.warmup + a.steps + i))
    sync()
    pipelined_s = (time.perf_counter() - t) / a.steps
    losses += [float(v.detach()) for v in pipelined]
    # the trainer's loop never waits (training/outcome.py): its s/step is the period of these steps
    periods = [x.elapsed_time(y) / 1e3 for x, y in zip(starts, starts[1:])] if cuda else [pipelined_s]
    res = dict(s_per_step=round(statistics.median(times), 3), min_s=round(min(times), 3),
               times=[round(t, 3) for t in times],
               s_per_step_pipelined=round(pipelined_s, 3),
               s_per_step_pipelined_median=round(statistics.median(periods), 3),
               pipelined_times=[round(t, 3) for t in periods],
               loss=round(losses[-1], 4), warmup_s=round(warmup_s, 1), losses=[round(v, 4) for v in losses])
    if phases:
        res["phases"] = phases
    if cuda:
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
        res["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 1)  # what the card must hold
    return res


def host_rss_gib() -> float | None:
    """This process's resident host memory (GiB; Linux), the pinned copies included."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def profile_step(step, sync, tag: str) -> None:
    """Kernel-time table and idle-GPU report of one step."""
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    from gpu_gaps import gap_report, print_report

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        step(10_000)
        sync()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=120))
    out = os.environ.get("OUT") or tempfile.gettempdir()
    path = os.path.join(out, f"trace_{tag or 'step'}.json")
    prof.export_chrome_trace(path)
    print_report(gap_report(path))
    if not os.environ.get("KEEP_TRACE"):
        os.remove(path)


def block_points(blocks, step, sync, note) -> None:
    """Run one step calling `note(kind, i)` when each block's forward starts ('f') and when its
    output's gradient arrives ('b', after the block swapper's hooks ran)."""
    def pre(i):
        return lambda module, args: note("f", i)

    def post(i):
        def hook(module, args, output):
            t = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(t, torch.Tensor) and t.requires_grad:
                t.register_hook(lambda grad: note("b", i))

        return hook

    handles = [h for i, b in enumerate(blocks) for h in (b.register_forward_pre_hook(pre(i)),
                                                          b.register_forward_hook(post(i)))]
    try:
        step(20_000)
        sync()
    finally:
        for h in handles:
            h.remove()


def memory_trace(blocks, step, sync) -> list[tuple[str, int, float]]:
    """Allocated GiB at each block point of one step (`block_points`). Host-side allocator counters: no sync."""
    points = []
    block_points(blocks, step, sync, lambda kind, i: points.append((kind, i, round(torch.cuda.memory_allocated() / 2**30, 2))))
    return points


def host_lead_trace(blocks, step, sync) -> list[tuple[str, int, float]]:
    """How far ahead of the GPU the host is at each block point of one step (`block_points`), in ms:
    when the GPU reached the point minus when the host queued it. Near 0: the GPU waits for the
    host there (host-bound); large: the host waits for the GPU (its launch queue full, or a sync)."""
    marks = []

    def note(kind, i):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        marks.append((kind, i, time.perf_counter(), event))

    sync()
    origin = torch.cuda.Event(enable_timing=True)
    origin.record()
    sync()  # the GPU is idle, so it reaches `origin` at the host's t0
    t0 = time.perf_counter()
    block_points(blocks, step, sync, note)
    return [(kind, i, round(origin.elapsed_time(e) - (t - t0) * 1e3, 1)) for kind, i, t, e in marks]


def main(argv=None) -> dict:
    a = parse(argv)
    from ltxv2_diffusers.lora import add_lora
    from ltxv2_diffusers.models.adapter import adapter_class_for_mode
    from ltxv2_diffusers.models.presets import build_components
    from ltxv2_diffusers.training.args import parse_args
    from ltxv2_diffusers.speed.setup import SpeedOptions, apply_speed_options, freeze_host_objects, thaw_host_objects
    from ltxv2_diffusers.training.step import TrainStep

    cuda = a.device.startswith("cuda")
    budget = None
    if a.memory_budget:
        from ltxv2_diffusers.speed import planner
        from ltxv2_diffusers.speed.options import parse_memory_budget

        budget = parse_memory_budget(a.memory_budget)
        budget = planner.resolve_budget(budget, a.device) if budget == "auto" else budget  # before the model loads
    ceiling = matmul_ceiling(a.device)
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if cuda else torch.float32
    overrides = {"transformer": {"num_layers": a.num_layers}} if a.num_layers else None
    transformer = build_components(a.preset, components=("transformer",), torch_dtype=dtype, device=a.device,
                                   overrides=overrides)["transformer"]
    params = sum(p.numel() for p in transformer.parameters())
    build_s = time.perf_counter() - t0
    progress(f"model built ({params / 1e9:.1f} B parameters)")
    add_lora(transformer, a.mode, a.rank, a.rank)
    transformer.enable_gradient_checkpointing()
    transformer.train()
    adapter = adapter_class_for_mode(a.mode).from_components(transformer)
    args = parse_args(["--ltx_mode", a.mode, "--ltxv2_timestep_format", "sd3_0_1"], validate=False)
    from ltxv2_diffusers.modes import resolve_mode
    args.mode = resolve_mode(a.mode)

    batch = make_batch(adapter, a, a.device)
    step_fn = TrainStep(adapter, args)
    fflops = None
    if cuda:  # count on the eager model: a dispatch mode around compiled code would skew both
        from torch.utils.flop_counter import FlopCounterMode

        def count() -> float:
            with torch.no_grad(), FlopCounterMode(display=False) as fc, torch.autocast("cuda", dtype=torch.bfloat16):
                step_fn(batch, generator=torch.Generator("cpu").manual_seed(0))
            return fc.get_total_flops()

        fflops = cached_flops(a, count)
        progress("forward FLOPs counted")
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    variants = [v.strip() for v in (a.recompute or ("ckpt" if a.low_memory else "keep")).split(",")]

    def recompute_options(v: str) -> dict:
        """See `parse_variant`; returns the SpeedOptions fields (and checkpointing/prefetch) it asks for."""
        base, extras, counts, placement = parse_variant(v)
        s, k, d = counts if counts else (swap_default, a.blocks_without_recompute, a.backward_prefetch)
        swapping = dict(blocks_to_swap=s, blocks_without_recompute=k, backward_prefetch=d,
                        without_recompute_placement=placement or SpeedOptions.without_recompute_placement,
                        lean_without_recompute="keepall" not in extras)
        torch._inductor.config.combo_kernels = "combo" in extras
        torch._inductor.config.coordinate_descent_tuning = "cdt" in extras  # tunes elementwise/reduction launches
        torch._inductor.config.cpp_wrapper = "cpp" in extras  # C++ instead of Python launching the kernels
        # The C++ wrapper cannot emit the CUDA-graph-safe form of a recomputed random op (torch 2.11:
        # "AssertionError: <class ...GraphSafeRunWithRngState>"); cuDNN attention counts as one.
        torch._functorch.config.graphsafe_rng_functionalization = "cpp" not in extras
        mode = "reduce-overhead" if "cg" in extras else a.compile_mode
        keep = dict(recompute="compiled", activation_memory_budget=None, compile_mode=mode, **swapping)
        if base == "none":  # no recomputation at all (needs the memory for every activation)
            return {**keep, "checkpointing": False}
        if base == "ckpt":
            return {**keep, "recompute": "checkpoint"}
        if base == "keep":
            return keep
        return {**keep, "activation_memory_budget": float(base)}

    if a.fp8_scaling:  # the module setting the fp8 layers read
        fp8.scaling = a.fp8_scaling
    opts = SpeedOptions.for_device(a.device, naive=a.speed == "naive", compile=not a.no_compile,
                                   attention_backend=a.attention_backend, low_memory=a.low_memory,
                                   blocks_to_swap=a.blocks_to_swap, blocks_without_recompute=a.blocks_without_recompute,
                                   offload_optimizer=a.offload_optimizer, fp8_base=a.fp8_base,
                                   offload_activations=a.offload_activations)
    plan = None
    if budget is not None:  # the trainer's planner, on this model and batch
        opts = SpeedOptions.for_device(a.device, compile=not a.no_compile, attention_backend=a.attention_backend,
                                       fp8_base=a.fp8_base, offload_activations=a.offload_activations,
                                       memory_budget=budget)
        trainable = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
        tokens = adapter.token_counts(batch)
        work = planner.Workload(video_tokens=tokens.get("video", 0), audio_tokens=tokens.get("audio", 0),
                                text_tokens=a.text_len)
        host = planner.Host(a.host_gib * 2**30) if a.host_gib else None
        plan = planner.plan_for(opts, planner.ModelFigures.from_transformer(transformer, trainable), work, budget,
                                host=host)
        print(plan.describe(), flush=True)
        opts = planner.planned_options(opts, plan)
        variants = ["plan"]
    swap_default = opts.blocks_to_swap
    prefetch = None
    burst = False
    tail = None

    def set_options(v: str) -> None:
        nonlocal prefetch, burst, tail
        extras = parse_variant(v)[1]
        burst = "burst" in extras
        opts.split_forward_only = "nofo" not in extras
        tail = next((_tail(x) for x in extras if _tail(x) is not None), None)
        kwargs = recompute_options(v)
        if kwargs.pop("checkpointing", True):
            transformer.enable_gradient_checkpointing()
        else:
            transformer.disable_gradient_checkpointing()
        prefetch = kwargs.pop("backward_prefetch")
        for key, value in kwargs.items():
            setattr(opts, key, value)

    def variant_swapper(swapper):
        """The variant's swapper: its prefetch settings, rebuilt with another resident tail if asked."""
        if swapper is None:
            return None
        if tail is not None and not swapper.rerun_in_backward:
            from ltxv2_diffusers.speed import BlockSwapper

            swapper.remove()
            swapper = BlockSwapper(transformer, opts.blocks_to_swap, device=a.device, rerun_in_backward=False,
                                   resident_tail=tail, forward_only=swapper.forward_only,
                                   forward_only_blocks=swapper.forward_only_blocks)
        if prefetch is not None:
            swapper.backward_prefetch = prefetch
        if burst:
            swapper.start_prefetch = swapper.backward_prefetch
        return swapper

    if plan is None:
        set_options(variants[0])
    speed = apply_speed_options(transformer, opts, device=a.device)
    speed.swapper = variant_swapper(speed.swapper)
    recomputed_by = speed.recompute  # what actually recomputes (block swapping forces whole blocks)
    optimizer = speed.make_optimizer(torch.optim.AdamW, lr=1e-4)
    progress("speed options applied, optimizer made")
    lora_params = sum(p.numel() for p in speed.trainable_params)
    if a.emulate_gib and cuda:  # what the plan left on the device, then the smaller card's cap
        import gc

        gc.collect()
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(a.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, a.emulate_gib * 2**30 / total))  # the current device
    tokens = adapter.token_counts(batch)
    from torch.profiler import record_function

    from ltxv2_diffusers.training.outcome import StepOutcome

    clock = PhaseClock(cuda)

    def step(i: int):
        if opts.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        g = torch.Generator("cpu").manual_seed(i)
        clock.mark("start")
        with record_function("step/forward+loss"), speed.autocast():
            loss, logs = step_fn(batch, generator=g)
        clock.mark("forward+loss")
        with record_function("step/backward"):
            loss.backward()
        clock.mark("backward")
        with record_function("step/grads_to_master"):
            speed.before_optimizer_step()
        clock.mark("grads_to_master")
        with record_function("step/optimizer"):
            # as the trainer does: clipped, the verdict on its way to the host, skipped on the device if bad
            norm = speed.clip_grad_norm(1.0)
            outcome = StepOutcome(i + 1, [loss, norm], {**logs, "grad_norm": norm}, loss.device)
            speed.skip_if(outcome.found_inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        clock.mark("optimizer")
        with record_function("step/master_to_model"):
            speed.after_optimizer_step()
        clock.mark("master_to_model")
        clock.end_step()
        return loss

    def sync():
        if cuda:
            torch.cuda.synchronize()

    results = []
    for n, variant in enumerate(variants):
        if n:  # same model, optimizer and LoRA state; only recomputation and swapping change
            from ltxv2_diffusers.speed.setup import configure_recompute, make_swapper

            if speed.swapper is not None:
                speed.swapper.remove()
            torch._dynamo.reset()
            set_options(variant)
            speed.swapper = variant_swapper(make_swapper(transformer, opts, a.device))
            recomputed_by = configure_recompute(transformer, opts)
        freeze = "gc" not in (parse_variant(variant)[1] if plan is None else [])
        try:
            if freeze:  # as the trainer does after its first step
                freeze_host_objects()
            res = measure(a, step, sync, cuda, clock)
        except torch.OutOfMemoryError as e:
            failed = dict(tag=a.tag, recompute=variant, error="out of memory")
            if cuda:  # what the allocator held when it failed: allocated, and reserved but not reusable
                held = torch.cuda.memory_stats()
                failed.update(allocated_gib=round(held["allocated_bytes.all.current"] / 2**30, 2),
                              reserved_gib=round(held["reserved_bytes.all.current"] / 2**30, 2),
                              peak_gib=round(held["allocated_bytes.all.peak"] / 2**30, 2))
                if plan is not None:
                    failed["predicted_gib"] = round(plan.peak_gib, 2)
            report(a, "RESULT", failed)
            print(str(e)[:300])
            continue
        finally:
            if freeze:
                thaw_host_objects()  # the next variant compiles new objects; it freezes again
        if plan is not None:
            res.update(plan=plan.describe(), predicted_gib=round(plan.peak_gib, 1), budget_gib=round(budget, 1),
                       emulated_gib=a.emulate_gib, predicted_host_gib=round(plan.host_gib, 1))
        res["host_rss_gib"] = host_rss_gib()  # pinned copies included: against the plan's predicted host memory
        if a.fp8_base:
            res["fp8_scaling"] = fp8.scaling
        res.update(tag=a.tag, recompute=variant, recomputed_by=recomputed_by, preset=a.preset, mode=a.mode, speed=a.speed, options=opts.describe(),
                   params_b=round(params / 1e9, 2), lora_params_m=round(lora_params / 1e6, 1),
                   video_tokens=tokens.get("video"), audio_tokens=tokens.get("audio"), build_s=round(build_s, 1),
                   compiled_graphs=int(torch._dynamo.utils.counters["stats"]["unique_graphs"]))
        if cuda:
            useful = 2 * fflops
            med = res["s_per_step"]
            res.update(forward_tflop=round(fflops / 1e12, 1), achieved_tflops=round(useful / med / 1e12),
                       matmul_ceiling_tflops=round(ceiling), mfu_vs_ceiling=round(useful / med / (ceiling * 1e12), 3),
                       gpu=torch.cuda.get_device_name())
        report(a, "RESULT", res)
        results.append(res)
        if a.memory_trace and cuda:
            points = memory_trace(list(transformer.transformer_blocks), step, sync)
            top = max(points, key=lambda p: p[2])
            report(a, "MEMTRACE", dict(tag=a.tag, recompute=variant, peak_at=top, points=points))
        if a.lead_trace and cuda:
            counters = ("num_alloc_retries", "num_device_alloc", "num_device_free", "num_sync_all_streams")
            before = torch.cuda.memory_stats()
            leads = host_lead_trace(list(transformer.transformer_blocks), step, sync)
            after = torch.cuda.memory_stats()  # allocator calls that synchronize, during that step
            report(a, "LEAD", dict(tag=a.tag, recompute=variant, points=leads,
                                   allocator={k: after.get(k, 0) - before.get(k, 0) for k in counters}))
        if a.memory_peak and cuda:
            from memory_peak import record

            peak = record(lambda: step(30_000), sync)
            report(a, "MEMPEAK", dict(tag=a.tag, recompute=variant, **peak))
        if a.profile and cuda:
            profile_step(step, sync, a.tag)
    res = results[-1] if results else {}
    return res


if __name__ == "__main__":
    main()
