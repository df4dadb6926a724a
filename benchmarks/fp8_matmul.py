"""Where an fp8 step's base-layer time goes: each part of `speed/quant/fp8.py` timed alone, per step.

Builds one block of the model at full width (`--preset`), converts its frozen base linears to fp8 as the
trainer does (`fp8_base_weights`), runs one forward on a batch of the benchmark's clip size to record every
fp8 layer's input rows, then times, for each distinct (rows, in, out), the bf16 matmuls the layer replaces
and the fp8 path's parts: quantizing the input, the scaled matmul each way `speed/quant/fp8.py` can scale it
(row-wise, row-wise with fast accumulation, tensor-wise plus a scaling pass), quantizing the output gradient,
transposing the fp8 weight, the input-gradient matmul each way.
Totals are per training step (one forward and one input-gradient matmul per layer and block, as with
blocks that recompute no matmul). The parts are timed eagerly; in training the blocks are compiled, which
can fuse the quantization into the kernel producing its input, so the quantize rows are an upper bound.
On a CPU (tests) the "bf16" parts run in fp32 and the times mean nothing.

Usage: python3 benchmarks/fp8_matmul.py [--preset ltx-2.0] [--frames 121 --height 512 --width 768]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse(argv=None):
    from train_step import add_model_and_clip_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_and_clip_arguments(p)
    p.add_argument("--min_features", type=int, default=256, help="smallest layer side quantized (the trainer's)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compiled_quantize", action="store_true",
                   help="also time the quantization compiled alone (inductor; slow to build on a CPU)")
    p.add_argument("--results", default=None, help="append the RESULT line to this file")
    return p.parse_args(argv)


def layer_shapes(transformer, adapter, batch, device) -> dict[tuple[int, int, int], int]:
    """{(rows, in, out): how many fp8 layers of one block see that shape} from one forward."""
    from ltxv2_diffusers.speed.quant.fp8 import Fp8Linear

    seen: dict[tuple[int, int, int], int] = {}
    hooks = []
    for module in transformer.transformer_blocks[0].modules():
        if isinstance(module, Fp8Linear):
            def record(m, args):
                key = (args[0].reshape(-1, args[0].shape[-1]).shape[0], m.in_features, m.out_features)
                seen[key] = seen.get(key, 0) + 1
            hooks.append(module.register_forward_pre_hook(record))
    g = torch.Generator("cpu").manual_seed(0)
    sigmas = {"video": torch.tensor([0.6]), "audio": torch.tensor([0.3])}
    noise = {"video": torch.randn(batch["latents"].shape, generator=g),
             "audio": torch.randn(batch["audio_latents"].shape, generator=g)}
    with torch.no_grad():
        adapter(batch, sigmas={k: v.to(device) for k, v in sigmas.items()},
                noise={k: v.to(device) for k, v in noise.items()})
    for h in hooks:
        h.remove()
    return seen


def timer(device: str, repeats: int, warmup: int):
    """`time(fn) -> median milliseconds` of `repeats` calls after `warmup` (CUDA events on a GPU)."""
    cuda = device.startswith("cuda")

    def time_ms(fn) -> float:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                samples.append((time.perf_counter() - t) * 1e3)
        return statistics.median(samples)

    return time_ms


def time_parts(rows: int, fan_in: int, fan_out: int, device: str, time_ms, compiled_quantize=None) -> dict:
    """Milliseconds of each part for one layer of this shape (None where this device cannot run it)."""
    from ltxv2_diffusers.speed.quant.fp8 import SCALINGS, _scaled_matmul, quantize_rows

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(rows, fan_in, device=device, dtype=dtype, generator=g)
    grad = torch.randn(rows, fan_out, device=device, dtype=dtype, generator=g)
    w = torch.randn(fan_out, fan_in, device=device, dtype=dtype, generator=g) * fan_in ** -0.5
    qw, scale = quantize_rows(w)
    scale = scale.view(1, -1)
    qx, x_scale = quantize_rows(x)
    qg, g_scale = quantize_rows(grad.float() * scale)
    qw_by_input = qw.t().contiguous()
    parts = {
        "bf16 forward": lambda: torch.nn.functional.linear(x, w),
        "bf16 input grad": lambda: grad @ w,
        "fp8 quantize input": lambda: quantize_rows(x),
        "fp8 quantize grad": lambda: quantize_rows(grad.float() * scale),
        "fp8 weight transpose": lambda: qw.t().contiguous(),
    }
    for how in SCALINGS:  # eager: the tensor-wise way's scaling pass is timed as a kernel of its own here
        parts[f"fp8 forward ({how})"] = lambda how=how: _scaled_matmul(qx, qw.t(), x_scale, scale, dtype, how)
        parts[f"fp8 input grad ({how})"] = lambda how=how: _scaled_matmul(qg, qw_by_input.t(), g_scale, None, dtype, how)
    if compiled_quantize is not None:
        parts["fp8 quantize input (compiled)"] = lambda: compiled_quantize(x)
    out = {}
    for name, fn in parts.items():
        try:
            out[name] = time_ms(fn)
        except RuntimeError as exc:  # e.g. a scaling mode this device's fp8 matmul does not take
            print(f"  {name} at {rows}x{fan_in}->{fan_out}: not run ({str(exc).splitlines()[0][:120]})")
            out[name] = None
    return out


def step_totals(per_shape: list[dict], blocks: int) -> dict:
    """Per-step milliseconds of each part: summed over a block's layers, times the model's blocks."""
    totals: dict[str, float | None] = {}
    for entry in per_shape:
        for name, ms in entry["ms"].items():
            if ms is None or totals.get(name, 0.0) is None:
                totals[name] = None
            else:
                totals[name] = totals.get(name, 0.0) + ms * entry["layers"] * blocks
    return totals


def main(argv=None) -> dict:
    a = parse(argv)
    from train_step import make_batch

    from ltxv2_diffusers.models.adapter import adapter_class_for_mode
    from ltxv2_diffusers.models.presets import build_components, preset_config
    from ltxv2_diffusers.speed.quant.fp8 import SCALINGS, fp8_base_weights, quantize_rows

    cuda = a.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    blocks = int(preset_config(a.preset)["transformer"].get("num_layers", 48))
    transformer = build_components(a.preset, components=("transformer",), torch_dtype=dtype, device=a.device,
                                   overrides={"transformer": {"num_layers": 1}})["transformer"]
    transformer.requires_grad_(False)
    layers = fp8_base_weights(transformer, a.min_features, device=a.device)
    if not layers:
        raise SystemExit(f"no linear layer of {a.preset} is at least {a.min_features} wide; lower --min_features")
    adapter = adapter_class_for_mode(a.mode).from_components(transformer)
    batch = make_batch(adapter, a, a.device)
    shapes = layer_shapes(transformer, adapter, batch, a.device)
    del transformer, adapter
    time_ms = timer(a.device, a.repeats, a.warmup)
    compiled = torch.compile(quantize_rows, dynamic=False) if a.compiled_quantize else None
    per_shape = []
    for (rows, fan_in, fan_out), count in sorted(shapes.items()):
        ms = time_parts(rows, fan_in, fan_out, a.device, time_ms, compiled)
        per_shape.append({"rows": rows, "in": fan_in, "out": fan_out, "layers": count, "ms": ms})
    totals = step_totals(per_shape, blocks)

    def total(*names):
        values = [totals.get(n) for n in names]
        return None if any(v is None for v in values) else sum(values)

    summary = {"bf16 matmuls": total("bf16 forward", "bf16 input grad"),
               **{f"fp8 matmuls ({how})": total(f"fp8 forward ({how})", f"fp8 input grad ({how})") for how in SCALINGS},
               "fp8 added passes": total("fp8 quantize input", "fp8 quantize grad", "fp8 weight transpose")}
    print(f"{layers} fp8 layers in one block of {a.preset} ({blocks} blocks); ms per step:")
    width = max(map(len, totals))
    for name, ms in list(totals.items()) + [("= " + k, v) for k, v in summary.items()]:
        print(f"  {name:<{width + 2}} {'n/a' if ms is None else f'{ms:9.1f}'}")
    record = {"preset": a.preset, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "frames": a.frames, "height": a.height, "width": a.width, "blocks": blocks,
              "fp8_layers_per_block": layers, "per_shape": per_shape, "step_ms": totals, "summary_ms": summary}
    line = "RESULT " + json.dumps(record)
    print(line)
    if a.results:
        with open(a.results, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    return record


if __name__ == "__main__":
    main()
