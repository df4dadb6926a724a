"""The memory planner: the fastest combination of memory levers that fits a GPU memory budget.

From the model's shape (block weights, widths, depth), the largest batch's token counts and the LoRA's
size, `plan_memory` predicts the peak of every combination of

- blocks streamed from pinned host memory (`blocks_to_swap`),
- blocks that recompute no matmul in backward (`blocks_without_recompute`, compiled recompute only),
- whole-block re-runs instead of compiled recompute (`rerun`: least activation memory; the mode in which
  every block but one can be streamed, since the forward drops what it fetched),
- the fp32 masters and AdamW moments in host memory (`offload_optimizer`),
- with re-runs, each block's hidden-state inputs in host memory between forward and backward
  (`offload_activations`: long clips, whose inputs outweigh the blocks' weights),
- int8 or fp8 base weights (only when no bf16 combination fits),

and a step time relative to the model's forward, and keeps the fastest that fits. The figures per block
(kept activations, working memory, how long the host link takes per block) are calibrated on the
full-size model's measured peaks (benchmarks/history.md); the trainer confirms a plan with the first
step's measured peak and re-plans once with the measured error (`Plan.corrected`).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Iterable

from .pinned import allocator_bytes, held_bytes

GiB = 2**30

# Activation figures in units of one block's bf16 hidden states (batch x (video tokens x video width +
# audio tokens x audio width) x 2 bytes), fitted to the full-size peaks at 768x512x121: a compiled block
# that recomputes keeps its input and its self-attention outputs; one without recompute keeps its matmul
# and attention outputs (`keep_matmul_outputs_policy`); a re-run block keeps its input only; the block
# whose backward runs at the peak needs its own activations and their gradients on top.
KEPT_RECOMPUTE = 2.0
KEPT_WITHOUT_RECOMPUTE = 16.0
KEPT_RERUN = 1.0
WORKING = 24.0
# The rotary tables every block reads, built once per forward and held until backward ends: the video's
# cos and sin (fp32 at half the width: two units) and the video side of the audio-video cross-attention's
# (one unit); 0.63 GiB at the peak of 1280x704x241, where they were measured.
ROTARY = 3.0
# The allocator's reserve above what is allocated (fragmentation), so a plan's allocated peak stays
# this far under the budget it is measured against: a share of the budget, or, where activations are
# large, a few times the largest one (at 1280x720x241 with a 16 GiB cap the allocator held 1.8 GiB
# reserved but unallocated when an 854 MiB feed-forward activation ran it out of memory).
ALLOCATOR_SLACK = 0.92
FRAGMENTS = 3
# Relative step times (in forwards of the whole model in bf16): backward is twice the forward; compiled
# recompute of a block costs most of its forward again (attention outputs are kept); a re-run costs a
# whole forward; int8 base weights, dequantized on every use inside the compiled blocks, cost about what bf16
# ones do (an H200 ran the int8 plan for a 16 GiB card on a 20 GiB host at 1.39 s/step, 1.43 predicted
# thus), fp8 ones multiply faster.
BACKWARD = 2.0
RECOMPUTE = 0.75
RERUN = 1.4
BASE_SPEED = {"bf16": 1.0, "fp8": 0.88, "int8": 1.0}
OFFLOAD_COST = 0.01  # the host-side AdamW runs beside the next forward: almost free
# Block inputs in host memory: copies on a side stream beside the compute (their bytes share the host link
# with streamed blocks), plus host work per block; an estimate, not yet measured on a GPU. Its first
# effect is to keep the lever for budgets that need it.
ACTIVATION_OFFLOAD_COST = 0.02
# Block inputs on the GPU with `offload_activations`: the block re-running and the one fetched ahead.
ACTIVATIONS_IN_FLIGHT = 2
SWAP_COST = 0.001  # per streamed block, host work and hooks, so equal plans stream no more than they must
# LoRA bytes per parameter on the GPU: bf16 weight and gradient (4) + fp32 master, its gradient and the
# two AdamW moments (16); with the optimizer offloaded, master and moments (12) live in host memory.
LORA_BYTES = 20
LORA_BYTES_OFFLOADED = 8
# An offloaded optimizer brings each chunk of 4 blocks' masters and moments (12 bytes per parameter) in for
# its update while the next chunk is copied in: two chunks on the GPU during the forward.
OFFLOAD_CHUNKS_BLOCKS = 8
# The trainer accepts a plan when the first steps' reserved peak stays this far under the budget (the
# optimizer's first update, which those steps do not run, and the allocator's growth need the rest).
CONFIRM_HEADROOM = 0.95
# The rate at which `forward_seconds`' FLOP count (which counts every linear on every token, so over-counts
# the audio layers) runs in a compiled bf16 step: fitted to the full-size forward's 0.32 s on an H100 and
# an H200; and the host link's rate for pinned copies (55 GB/s measured, less for many copies at once).
MATMUL_RATE = 830e12
LINK_RATE = 50e9
# The share of the host's available memory pinned copies may take (`block_swap.check_host_memory`'s rule).
HOST_SHARE = 0.9
# `--memory_budget auto` is the device's free memory less this margin (other processes' growth, the CUDA
# context of libraries loaded later).
AUTO_MARGIN_GIB = 1.5


@dataclasses.dataclass(frozen=True)
class ModelFigures:
    """What the planner needs to know about a transformer and its LoRA, in bytes and parameters."""

    num_blocks: int
    block_bytes: int  # one block's frozen matrices in bf16 (what a swapped block streams)
    block_quantized_bytes: int  # the same with int8/fp8 base weights (narrow layers stay bf16)
    block_vector_bytes: int  # biases, norms, tables: stay on the device
    other_bytes: int  # everything outside the blocks
    video_width: int
    audio_width: int
    lora_params: int
    linear_params_per_block: int  # for the forward's FLOP count
    widest_output: int  # the widest base linear's outputs (the feed-forward's inner width)

    @classmethod
    def from_transformer(cls, transformer, lora_params: int, min_features: int = 256) -> "ModelFigures":
        """Count a (possibly meta-device) diffusers LTX-2 transformer; `lora_params` trainable LoRA parameters."""
        from torch import nn

        blocks = list(transformer.transformer_blocks)
        block = blocks[0]
        matrix = vector = quantized = linear = widest = 0
        quantizable = set()
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear) and "lora_" not in name:
                linear += module.weight.numel()
                widest = max(widest, module.out_features)
                if min(module.in_features, module.out_features) >= min_features:
                    quantizable.add(id(module.weight))
        for name, p in itertools.chain(block.named_parameters(), block.named_buffers()):
            if "lora_" in name:
                continue
            nbytes = p.numel() * 2
            if sum(d > 1 for d in p.shape) > 1:
                matrix += nbytes
                quantized += p.numel() + 4 * p.shape[0] if id(p) in quantizable else nbytes
            else:
                vector += nbytes
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        other = sum(p.numel() * 2 for n, p in transformer.named_parameters() if id(p) not in in_blocks and "lora_" not in n)
        config = transformer.config
        return cls(num_blocks=len(blocks), block_bytes=matrix, block_quantized_bytes=quantized,
                   block_vector_bytes=vector, other_bytes=other,
                   video_width=config.num_attention_heads * config.attention_head_dim,
                   audio_width=config.audio_num_attention_heads * config.audio_attention_head_dim,
                   lora_params=int(lora_params), linear_params_per_block=linear, widest_output=widest)

    @classmethod
    def from_config(cls, config: dict, mode: str = "av", rank: int = 32, target_options=None,
                    min_features: int = 256) -> "ModelFigures":
        """From a diffusers transformer config alone (no weights: one block built on the meta device) and
        a LoRA of `rank` on the targets `mode` selects."""
        import torch
        from diffusers import LTX2VideoTransformer3DModel

        from ltxv2_diffusers.lora import select_lora_targets

        num_blocks = int(config.get("num_layers", 48))
        known = LTX2VideoTransformer3DModel.extract_init_dict(dict(config))[0]
        with torch.device("meta"):
            model = LTX2VideoTransformer3DModel(**{**known, "num_layers": 1})
        targets = select_lora_targets(model, mode, target_options)
        modules = dict(model.named_modules())
        per_block = sum(rank * (modules[t].in_features + modules[t].out_features) for t in targets)
        figures = cls.from_transformer(model, per_block * num_blocks, min_features)
        return dataclasses.replace(figures, num_blocks=num_blocks)


@dataclasses.dataclass(frozen=True)
class Workload:
    """The largest batch a run trains on: items per process and tokens per item."""

    video_tokens: int
    audio_tokens: int = 0
    batch: int = 1
    text_tokens: int = 1024


@dataclasses.dataclass(frozen=True)
class Plan:
    """One combination of levers, with its predicted peak (GiB allocated) and step time (seconds)."""

    blocks_to_swap: int = 0
    blocks_without_recompute: int = 0
    rerun: bool = False  # whole-block re-runs (torch.utils.checkpoint) instead of compiled recompute
    offload_optimizer: bool = False
    base: str = "bf16"
    offload_activations: bool = False  # block inputs in host memory (re-runs only)
    peak_gib: float = 0.0
    seconds: float = 0.0
    budget_gib: float | None = None
    fits: bool = True
    host_gib: float = 0.0  # pinned host memory while training (streamed blocks, optimizer, block inputs)

    def describe(self) -> str:
        """The plan in one line, for the run's log."""
        base = {"bf16": "bf16 base", "int8": "int8 base", "fp8": "fp8 base"}[self.base]
        recompute = ("whole blocks re-run in backward" if self.rerun else
                     f"{self.blocks_without_recompute} blocks without recompute")
        if self.offload_activations:
            recompute += " (their inputs in host memory)"
        parts = [base, f"{self.blocks_to_swap} blocks streamed from host memory", recompute,
                 "optimizer in host memory" if self.offload_optimizer else "optimizer on the GPU"]
        budget = f" of a {self.budget_gib:.1f} GiB budget" if self.budget_gib is not None else ""
        verdict = "" if self.fits else " (DOES NOT FIT)"
        host = f", {self.host_gib:.1f} GiB of host memory pinned" if self.host_gib >= 0.05 else ""
        return (f"memory plan: {', '.join(parts)}; predicted peak {self.peak_gib:.1f} GiB{budget}{verdict}{host}, "
                f"about {self.seconds:.2f} s/step")

    def speed_options(self) -> dict:
        """The `SpeedOptions` fields this plan sets."""
        return dict(blocks_to_swap=self.blocks_to_swap, blocks_without_recompute=self.blocks_without_recompute,
                    recompute="checkpoint" if self.rerun else "compiled", offload_optimizer=self.offload_optimizer,
                    int8_base=self.base == "int8", fp8_base=self.base == "fp8",
                    offload_activations=self.offload_activations)


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Levers the user set by hand (None: the planner chooses)."""

    blocks_to_swap: int | None = None
    blocks_without_recompute: int | None = None
    rerun: bool | None = None
    offload_optimizer: bool | None = None
    base: str | None = None
    offload_activations: bool | None = None


def _block_bytes(fig: ModelFigures, plan: Plan) -> int:
    """One block's frozen matrices in the plan's base dtype (what a streamed block moves and pins)."""
    return fig.block_bytes if plan.base == "bf16" else fig.block_quantized_bytes


def _hidden_bytes(fig: ModelFigures, work: Workload) -> float:
    return work.batch * (work.video_tokens * fig.video_width + work.audio_tokens * fig.audio_width) * 2


def _largest_activation(fig: ModelFigures, work: Workload) -> float:
    return work.batch * work.video_tokens * fig.widest_output * 2


def allocatable(fig: ModelFigures, work: Workload, budget_gib: float) -> float:
    """Bytes a plan may allocate at its peak under `budget_gib`, the allocator's reserve left over."""
    return budget_gib * GiB - max((1 - ALLOCATOR_SLACK) * budget_gib * GiB, FRAGMENTS * _largest_activation(fig, work))


def budget_needed(fig: ModelFigures, work: Workload, peak_bytes: float) -> float:
    """The GiB budget under which an allocated peak of `peak_bytes` fits (`allocatable`'s inverse)."""
    return max(peak_bytes / ALLOCATOR_SLACK, peak_bytes + FRAGMENTS * _largest_activation(fig, work)) / GiB


def forward_seconds(fig: ModelFigures, work: Workload, rate: float = MATMUL_RATE) -> float:
    """Seconds of one bf16 forward of every block (matmuls, self- and cross-attention)."""
    tokens = work.video_tokens + work.audio_tokens
    linear = 2 * fig.linear_params_per_block * tokens
    attention = 4 * (work.video_tokens**2 * fig.video_width + work.audio_tokens**2 * fig.audio_width)
    cross = 4 * tokens * work.text_tokens * fig.video_width
    return work.batch * fig.num_blocks * (linear + attention + cross) / rate


def predict_peak(fig: ModelFigures, work: Workload, plan: Plan) -> float:
    """Predicted peak of allocated GPU memory in bytes."""
    n, s, k = fig.num_blocks, plan.blocks_to_swap, plan.blocks_without_recompute
    w = _block_bytes(fig, plan)
    unit = _hidden_bytes(fig, work)
    fixed = fig.other_bytes + n * fig.block_vector_bytes
    lora = fig.lora_params * (LORA_BYTES_OFFLOADED if plan.offload_optimizer else LORA_BYTES)
    if plan.offload_optimizer:
        lora += fig.lora_params * 12 * min(OFFLOAD_CHUNKS_BLOCKS, n) / n
    if plan.rerun:  # the re-run block and the next one in flight
        inputs = min(ACTIVATIONS_IN_FLIGHT, n) if plan.offload_activations else n
        return fixed + (n - s) * w + min(2, s) * w + (inputs * KEPT_RERUN + WORKING + ROTARY) * unit + lora
    kept = k * KEPT_WITHOUT_RECOMPUTE + (n - k) * KEPT_RECOMPUTE
    backward_start = fixed + (n - s) * w + min(1, s) * w + (kept + WORKING + ROTARY) * unit + lora
    # Blocks fetched for backward stay into the next forward: between steps every weight is on the GPU.
    between_steps = fixed + n * w + lora + WORKING * unit
    return max(backward_start, between_steps)


def host_bytes(fig: ModelFigures, work: Workload, plan: Plan) -> tuple[float, float]:
    """Pinned host memory a plan needs: (the streamed blocks' copies, made while every block still sits in
    host memory as loaded; everything pinned while training: those, the offloaded optimizer's master and
    moments, block inputs). Blocks and block inputs are held in `HostBuffer`s (`held_bytes`); the
    optimizer's three flat tensors are ordinary pinned tensors, each rounded up to a power of two by the
    pinned allocator (`allocator_bytes`)."""
    n = fig.num_blocks
    w = _block_bytes(fig, plan)
    streamed = plan.blocks_to_swap * held_bytes(w)
    training = streamed + (3 * allocator_bytes(4 * fig.lora_params) if plan.offload_optimizer else 0)
    if plan.offload_activations and plan.rerun:
        video = work.batch * work.video_tokens * fig.video_width * 2
        audio = work.batch * work.audio_tokens * fig.audio_width * 2
        training += n * (held_bytes(video) + held_bytes(audio))
    return streamed, training


@dataclasses.dataclass(frozen=True)
class Host:
    """The host memory a run may use: `available` bytes for this process (its share of what the host has
    free before the model loads); `checkpoint_mapped`: the blocks' weights are bf16 in the checkpoint, so
    until they are streamed they stay memory-mapped file pages the kernel can drop, not process memory
    (the loader's safetensors path; measured by tests/test_host_memory.py)."""

    available: float
    checkpoint_mapped: bool = True


def fits_host(fig: ModelFigures, work: Workload, plan: Plan, host: Host | None) -> bool:
    """Whether the plan's pinned copies fit the host's memory (None: unknown, assume so). Streamed blocks
    are copied while every block is still in host memory as loaded: free for a mapped bf16 checkpoint
    (quantized bases included: each block is quantized on the device on its way to the pinned copy),
    process memory for one cast in loading (the block swapper's own check then sees that memory in use)."""
    if host is None:
        return True
    streamed, training = host_bytes(fig, work, plan)
    loaded = 0 if host.checkpoint_mapped else fig.num_blocks * fig.block_bytes
    if streamed and streamed > HOST_SHARE * (host.available - loaded):
        return False
    return training <= HOST_SHARE * host.available


def predict_seconds(fig: ModelFigures, work: Workload, plan: Plan, rate: float = MATMUL_RATE,
                    link: float = LINK_RATE) -> float:
    """Predicted seconds per step: compute, plus what the host link adds where streaming outlasts it."""
    n, s, k = fig.num_blocks, plan.blocks_to_swap, plan.blocks_without_recompute
    f = forward_seconds(fig, work, rate) * BASE_SPEED[plan.base]
    w = _block_bytes(fig, plan)
    copy = s * w / link
    if plan.rerun:  # fetched twice: for the forward and for the re-run before backward
        if plan.offload_activations:  # every block's inputs out during forward, back during backward
            copy += n * _hidden_bytes(fig, work) / link
        seconds = max(f, copy) + max(f * (RERUN + BACKWARD), copy)
        if plan.offload_activations:
            seconds += f * ACTIVATION_OFFLOAD_COST
    else:  # fetched once, during backward; kept into the next forward
        backward = f * (BACKWARD + RECOMPUTE * (n - k) / n)
        seconds = f + max(backward, copy)
    return seconds + f * (SWAP_COST * s + (OFFLOAD_COST if plan.offload_optimizer else 0.0))


def _candidates(fig: ModelFigures, bases: Iterable[str], fixed: Fixed) -> Iterable[Plan]:
    n = fig.num_blocks
    for base in bases:
        for rerun in (False, True) if fixed.rerun is None else (fixed.rerun,):
            acts = ((False, True) if rerun else (False,)) if fixed.offload_activations is None \
                else (fixed.offload_activations,)
            for offload, activations in itertools.product(
                    (False, True) if fixed.offload_optimizer is None else (fixed.offload_optimizer,), acts):
                swaps = range(n) if fixed.blocks_to_swap is None else (fixed.blocks_to_swap,)
                exempt = ((0,) if rerun else range(n + 1)) if fixed.blocks_without_recompute is None \
                    else (fixed.blocks_without_recompute,)
                for s in swaps:
                    for k in exempt:
                        yield Plan(blocks_to_swap=s, blocks_without_recompute=k, rerun=rerun,
                                   offload_optimizer=offload, base=base, offload_activations=activations)


def plan_memory(fig: ModelFigures, work: Workload, budget_gib: float, *, quantized: Iterable[str] = ("int8",),
                fixed: Fixed = Fixed(), rate: float = MATMUL_RATE, link: float = LINK_RATE,
                host: Host | None = None) -> Plan:
    """The fastest plan whose predicted peak fits `budget_gib` (less the allocator's reserve: `allocatable`)
    and whose pinned copies fit the `host`'s memory (None: not checked). bf16 base weights first;
    `quantized` bases (in order of preference) only when no bf16 plan fits. When nothing fits, the plan with
    the smallest peak (among those the host can hold, if any), marked `fits=False` (`explain` says what
    would fit)."""
    limit = allocatable(fig, work, budget_gib)
    bases = [fixed.base] if fixed.base else ["bf16", *[b for b in quantized if b != "bf16"]]
    smallest: Plan | None = None
    smallest_on_host = False
    for tier in ([bases[0]], bases[1:]) if not fixed.base else ([fixed.base],):
        best: Plan | None = None
        for plan in _candidates(fig, tier, fixed):
            peak = predict_peak(fig, work, plan)
            plan = dataclasses.replace(plan, peak_gib=peak / GiB, budget_gib=budget_gib,
                                       host_gib=host_bytes(fig, work, plan)[1] / GiB)
            on_host = fits_host(fig, work, plan, host)
            if smallest is None or (on_host, -peak) > (smallest_on_host, -smallest.peak_gib * GiB):
                smallest, smallest_on_host = plan, on_host
            if peak > limit or not on_host:
                continue
            seconds = predict_seconds(fig, work, plan, rate, link)
            if best is None or (seconds, peak) < (best.seconds, best.peak_gib * GiB):
                best = dataclasses.replace(plan, seconds=seconds)
        if best is not None:
            return best
    assert smallest is not None
    return dataclasses.replace(smallest, fits=False, seconds=predict_seconds(fig, work, smallest, rate, link))


def explain(fig: ModelFigures, work: Workload, plan: Plan, host: Host | None = None,
            fixed: Fixed = Fixed()) -> str:
    """For a plan that does not fit: what would (a larger budget, fewer tokens, more free host memory), in
    one sentence (`fixed`: the levers the plan was made with)."""
    if not fits_host(fig, work, plan, host):
        pinned = host_bytes(fig, work, plan)
        return (f"nothing fits {plan.budget_gib:.1f} GiB with the host memory available ({host.available / GiB:.1f} "
                f"GiB for this process): the leanest plan pins {pinned[1] / GiB:.1f} GiB there (streaming blocks "
                f"needs room beside the loaded model too); free host memory, run fewer processes on this host, or "
                f"raise --memory_budget")
    need = budget_needed(fig, work, plan.peak_gib * GiB)
    tokens, lo = work.video_tokens, 1
    # The largest video token count (same frames/size ratio) whose smallest plan fits.
    hi = tokens
    while lo < hi:
        mid = (lo + hi + 1) // 2
        smaller = dataclasses.replace(work, video_tokens=mid, audio_tokens=work.audio_tokens * mid // max(tokens, 1))
        lean = predict_peak(fig, smaller, dataclasses.replace(plan, peak_gib=0))
        if lean <= allocatable(fig, smaller, plan.budget_gib):
            lo = mid
        else:
            hi = mid - 1
    fewer = (f", or buckets of at most {lo} video tokens per batch (now {tokens}; "
             f"tokens = frames/8+1 x height/32 x width/32 x batch)") if lo > 1 else ""
    if host is not None:  # would more free host memory (for streaming) do?
        unlimited = plan_memory(fig, work, plan.budget_gib, fixed=fixed)
        if unlimited.fits:  # the least free host memory with which some plan fits, between now and that plan's
            lo = math.ceil(host.available / GiB)
            hi = next(gib for gib in itertools.count(lo)
                      if fits_host(fig, work, unlimited, dataclasses.replace(host, available=gib * GiB)))
            while lo < hi:
                mid = (lo + hi) // 2
                more = dataclasses.replace(host, available=mid * GiB)
                fits = plan_memory(fig, work, plan.budget_gib, fixed=fixed, host=more).fits
                lo, hi = (lo, mid) if fits else (mid + 1, hi)
            fewer += f", or {hi} GiB of free host memory (now {host.available / GiB:.0f}) to stream blocks from"
    return (f"nothing fits {plan.budget_gib:.1f} GiB: the leanest plan needs about {need:.1f} GiB (--memory_budget "
            f"{math.ceil(need)}){fewer}")


def resolve_budget(budget: float | str, device=None, margin_gib: float = AUTO_MARGIN_GIB) -> float:
    """GiB for a `--memory_budget`: a number as given; 'auto' is the device's free memory less `margin_gib`."""
    if budget != "auto":
        return float(budget)
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    return max(free / GiB - margin_gib, 0.5)


def fixed_levers(options) -> Fixed:
    """The levers of `SpeedOptions` the user set by hand (`options.fixed`), which the planner keeps."""
    f = options.fixed
    no_compiled_recompute = not options.compile or options.recompute != "compiled"
    return Fixed(blocks_to_swap=options.blocks_to_swap if "blocks_to_swap" in f else None,
                 blocks_without_recompute=options.blocks_without_recompute if "blocks_without_recompute" in f else None,
                 rerun=True if no_compiled_recompute or "offload_activations" in f else None,
                 offload_optimizer=True if "offload_optimizer" in f else None,
                 base="fp8" if options.fp8_base else None,
                 offload_activations=True if "offload_activations" in f else None)


def planned_options(options, plan: Plan):
    """`options` with the levers `plan` chose."""
    return dataclasses.replace(options, **plan.speed_options())


def plan_for(options, figures: ModelFigures, work: Workload, budget_gib: float, *, correction: float = 1.0,
             host: Host | None = None) -> Plan:
    """The plan for `SpeedOptions` with a budget: the user's levers fixed, int8 base weights when nothing in
    bf16 fits (fp8 only when asked for: `--fp8_base`). `correction` (measured peak over predicted) scales
    the budget down after a first step that overshot; `host`: the host memory this process may pin (None:
    not checked)."""
    plan = plan_memory(figures, work, budget_gib / max(correction, 1.0), fixed=fixed_levers(options),
                       quantized=("int8",), host=host)
    return dataclasses.replace(plan, budget_gib=budget_gib)
