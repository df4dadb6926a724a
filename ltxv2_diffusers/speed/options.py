"""What a run asks of the speed and memory levers, and every rule about combining them, once.

`SpeedOptions.from_args` reads the trainer's flags (attributes a library caller may leave out get the
defaults); `SpeedOptions.problems` lists what is wrong with a combination, and is what argument
validation, the trainer's pre-load check and `apply_speed_options` all use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .block_swap import check_swap_count

OFFLOAD_NEEDS_FAST = ("--offload_optimizer offloads the fast path's fp32 master weights; it needs bf16 compute "
                      "(drop --speed naive)")
FP8_NEEDS_FAST = "--fp8_base multiplies the fast path's bf16 activations in fp8; drop --speed naive"


def parse_memory_budget(value: Any) -> float | str | None:
    """`--memory_budget`: 'auto', 'off' (None) or GiB > 0; raises ValueError naming the flag."""
    if value is None or str(value).strip().lower() in ("off", "none"):
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        gib = float(text.removesuffix("gib").removesuffix("gb"))
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise ValueError(f"--memory_budget must be 'auto', 'off' or a number of GiB such as 24 (got {value!r})")
    return gib


@dataclasses.dataclass
class SpeedOptions:
    """`naive`: autocast with fp32 LoRA weights (diffusers' documented recipe), eager.
    Otherwise: bf16 LoRA compute with fp32 master weights, fused AdamW, regional `torch.compile`
    (`compile`), an optional diffusers attention backend, and the memory levers, which the memory
    planner (`memory_budget`) chooses where the user did not set them."""

    naive: bool = False
    compile: bool = True
    # With gradient checkpointing on: "compiled" recomputes inside each compiled block (keeping what
    # `keep_attention_policy` or `activation_memory_budget` says), "checkpoint" re-runs whole blocks
    # through diffusers' torch.utils.checkpoint (needed by block swapping and eager runs).
    recompute: str = "compiled"
    attention_backend: str | None = None
    int8_base: bool = False
    # Frozen base linears in e4m3 with fp8 matmuls (quant/fp8.py): not bf16-exact, opt-in
    fp8_base: bool = False
    quantize_min_features: int = 256  # int8/fp8 leave linears narrower than this in the compute dtype
    blocks_to_swap: int = 0
    activation_memory_budget: float | None = None
    # With compiled recompute: how many blocks recompute no matmul and keep their outputs instead
    # (~0.7 GiB each at 768x512x121, about -6 ms/step each on an H100), e.g. paid for with memory that
    # block swapping freed. "spread" (default): spread evenly, so fast (exempt) and slow backward
    # blocks alternate and the swapped blocks' copies keep pace (measured 12 ms/step faster than
    # "last" at 40/26, benchmarks/history.md); "last": the last blocks (slightly less memory).
    blocks_without_recompute: int = 0
    without_recompute_placement: str = "spread"
    # Those blocks still recompute elementwise work (norms, modulation, RoPE) inside their backward
    # instead of keeping its results (`keep_matmul_outputs_policy`: ~0.79 instead of ~1.11 GiB each
    # at full size); False keeps what the partitioner keeps by default (benchmark comparisons).
    lean_without_recompute: bool = True
    # fp32 masters and AdamW moments in pinned host memory, updated during the next forward (-2.4 GiB at
    # full size, rank 32); see optim/optimizer_offload.py
    offload_optimizer: bool = False
    # With whole-block re-runs: each block's hidden-state inputs wait in pinned host memory between forward
    # and backward instead of on the GPU (activation_offload.py)
    offload_activations: bool = False
    # Swapped blocks that recompute nothing leave the text keys' and values' weights, which their
    # backward never reads, to be fetched by the next forward (`BlockSwapper(forward_only=...)`)
    split_forward_only: bool = True
    compile_backend: str = "inductor"
    compile_mode: str | None = None  # torch.compile mode, e.g. "reduce-overhead" (CUDA graphs)
    compute_dtype: torch.dtype = torch.bfloat16
    device_type: str = "cuda"
    low_memory: bool = False  # the fixed recipe of --low_memory (int8 base, 8 re-run blocks swapped)
    # GiB, "auto" or None (off): the planner fills the levers the user left unset (`planned_levers`)
    memory_budget: float | str | None = None
    # Levers the user set by hand, which the planner keeps
    fixed: frozenset = frozenset()
    # Recompute activations in backward (`--gradient_checkpointing`; a memory plan always does):
    # `apply_speed_options` sets it on the transformer. None: leave the transformer as it is (library use).
    gradient_checkpointing: bool | None = None

    @classmethod
    def for_device(cls, device: str | torch.device, *, naive: bool = False, compile: bool = True,
                   attention_backend: str | None = None, low_memory: bool = False,
                   blocks_to_swap: int | None = None, recompute: str = "compiled",
                   activation_memory_budget: float | None = None, blocks_without_recompute: int | None = None,
                   offload_optimizer: bool = False, fp8_base: bool = False,
                   offload_activations: bool = False, memory_budget: float | str | None = None,
                   gradient_checkpointing: bool | None = None) -> "SpeedOptions":
        """What the flags ask for on `device`, unchecked (`problems` says what is wrong): the fast path
        needs CUDA; on a CPU the step stays eager in fp32 (the memory levers asked for stay recorded,
        so `problems` can name them)."""
        device_type = torch.device(device).type
        fixed = {name for name, value in (("blocks_to_swap", blocks_to_swap),
                                          ("blocks_without_recompute", blocks_without_recompute)) if value is not None}
        fixed |= {"offload_optimizer"} if offload_optimizer else set()
        fixed |= {"offload_activations"} if offload_activations else set()
        fixed |= {"base"} if fp8_base else set()
        swap = blocks_to_swap if blocks_to_swap is not None else (8 if low_memory else 0)
        levers = dict(blocks_to_swap=swap, activation_memory_budget=activation_memory_budget,
                      blocks_without_recompute=blocks_without_recompute or 0, offload_optimizer=offload_optimizer,
                      offload_activations=offload_activations,
                      low_memory=low_memory, fp8_base=fp8_base, fixed=frozenset(fixed),
                      gradient_checkpointing=gradient_checkpointing)
        if device_type != "cuda":
            return cls(naive=True, compile=False, recompute="checkpoint", compute_dtype=torch.float32,
                       device_type=device_type, **levers)
        # The 24 GiB recipe re-runs whole blocks: keeping attention outputs would cost 2.3 GiB. With --fp8_base its
        # base weights are fp8 instead of int8 (the same bytes, multiplied in fp8 instead of dequantized).
        planned = memory_budget is not None and not naive and not low_memory
        if planned:  # every plan's levers recompute
            levers["gradient_checkpointing"] = True
        return cls(naive=naive, compile=compile and not naive, attention_backend=attention_backend,
                   int8_base=low_memory and not fp8_base, recompute="checkpoint" if low_memory else recompute,
                   memory_budget=memory_budget if planned else None, **levers)

    @classmethod
    def from_args(cls, args, device: str | torch.device | None = None) -> "SpeedOptions":
        """From the trainer's parsed flags; `device` defaults to CUDA when there is one. Attributes the
        trainer's parser no longer has (`speed`, `recompute`, `activation_memory_budget`: benchmarks and
        library callers set them) take their defaults."""
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        get = lambda name, default=None: getattr(args, name, default)  # noqa: E731
        return cls.for_device(device, naive=get("speed", "fast") == "naive", compile=not get("no_compile", False),
                              attention_backend=get("attention_backend"), low_memory=bool(get("low_memory", False)),
                              blocks_to_swap=get("blocks_to_swap"), recompute=get("recompute", "compiled"),
                              activation_memory_budget=get("activation_memory_budget"),
                              blocks_without_recompute=get("blocks_without_recompute"),
                              offload_optimizer=bool(get("offload_optimizer", False)),
                              fp8_base=bool(get("fp8_base", False)),
                              offload_activations=bool(get("offload_activations", False)),
                              memory_budget=parse_memory_budget(get("memory_budget", "auto")),
                              gradient_checkpointing=bool(get("gradient_checkpointing", False)))

    @property
    def checkpointing(self) -> bool:
        """Whether the run recomputes activations in backward: unless `gradient_checkpointing` says it does
        not (a plan always does; None, a library caller's transformer, is taken to)."""
        return self.gradient_checkpointing is not False

    @property
    def planned(self) -> bool:
        """Whether the memory planner chooses the levers the user left unset."""
        return self.memory_budget is not None and self.device_type == "cuda"

    def compiled_recompute(self, checkpointing: bool) -> bool:
        """Whether the compiled blocks do the recomputation themselves instead of diffusers' checkpointing."""
        return compiled_recompute(compile=self.compile, recompute=self.recompute, checkpointing=checkpointing)

    def problems(self, num_blocks: int | None = None, checkpointing: bool | None = None, *,
                 device: bool = True) -> list[str]:
        """Everything wrong with this combination, one message each (naming the flags and what to do), for
        a model of `num_blocks` transformer blocks (None: not known yet) with diffusers' gradient
        checkpointing as the run sets it (None: `gradient_checkpointing`, else on). `device=False` leaves out
        that the memory levers want CUDA (the user's flags must run on CUDA; tests and benchmarks stream
        blocks on a CPU on purpose)."""
        if checkpointing is None:
            checkpointing = self.checkpointing
        out: list[str] = []
        cuda_only = [flag for flag, on in (("--low_memory", self.low_memory), ("--blocks_to_swap", self.blocks_to_swap),
                                           ("--activation_memory_budget", self.activation_memory_budget is not None),
                                           ("--blocks_without_recompute", self.blocks_without_recompute),
                                           ("--offload_optimizer", self.offload_optimizer),
                                           ("--offload_activations", self.offload_activations)) if on]
        if device and self.device_type != "cuda" and cuda_only:
            out.append(f"{' / '.join(cuda_only)} need a CUDA device and none is available (this run is on "
                       f"{self.device_type}); drop them to train on this machine")
        naive = self.naive and self.device_type == "cuda"
        if self.offload_optimizer and self.device_type == "cuda" and (self.naive or self.compute_dtype == torch.float32):
            out.append(OFFLOAD_NEEDS_FAST)
        if self.fp8_base and naive:
            out.append(FP8_NEEDS_FAST)
        if self.recompute not in ("compiled", "checkpoint"):
            out.append(f"--recompute must be 'compiled' or 'checkpoint', got {self.recompute!r}")
        if self.low_memory and not checkpointing:
            out.append("--low_memory swaps blocks, which needs --gradient_checkpointing")
        if self.blocks_to_swap is not None and self.blocks_to_swap < 0:
            out.append(f"--blocks_to_swap must be > 0 (got {self.blocks_to_swap})")
        elif self.blocks_to_swap and num_blocks is not None:
            try:
                check_swap_count(self.blocks_to_swap, num_blocks)
            except ValueError as exc:
                out.append(str(exc))
        inside = self.compiled_recompute(checkpointing)
        budget = self.activation_memory_budget
        if budget is not None:
            if not 0.0 <= budget <= 1.0:
                out.append("--activation_memory_budget must lie in [0, 1]")
            if not inside:
                out.append("--activation_memory_budget sets what compiled blocks keep when they recompute: it needs "
                           "--gradient_checkpointing and --recompute compiled, without --no_compile or --low_memory")
        if self.offload_activations and not self.planned and (inside or not checkpointing):
            out.append("--offload_activations keeps the inputs of whole-block re-runs in host memory: it needs "
                       "--gradient_checkpointing with whole blocks re-run: leave the other levers to the memory "
                       "planner (--memory_budget), or add --no_compile")
        if self.offload_activations and self.blocks_without_recompute:
            out.append("--offload_activations and --blocks_without_recompute exclude each other (one re-runs whole "
                       "blocks, the other keeps compiled blocks' outputs); keep one")
        k = self.blocks_without_recompute
        if k:
            if k < 0:
                out.append(f"--blocks_without_recompute must be > 0 (got {k})")
            if not inside or budget is not None:
                out.append("--blocks_without_recompute exempts blocks from the compiled blocks' recomputation: it "
                           "needs --gradient_checkpointing and --recompute compiled, without --no_compile, "
                           "--low_memory or --activation_memory_budget")
            if num_blocks is not None and not 0 < k <= num_blocks:
                out.append(f"--blocks_without_recompute must be between 1 and {num_blocks} for this "
                           f"{num_blocks}-block model (got {k})")
            if self.without_recompute_placement not in ("spread", "last"):
                out.append(f"without_recompute_placement must be 'spread' or 'last', "
                           f"got {self.without_recompute_placement!r}")
        return out

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["compute_dtype"] = str(self.compute_dtype).replace("torch.", "")
        d["fixed"] = sorted(self.fixed)
        return d


def args_problems(args, device: str | torch.device | None = None) -> list[str]:
    """The speed rules for the trainer's flags: `SpeedOptions.problems` plus what the optimizer and mixed
    precision flags must be for them (before any weight loads; block counts are checked against the
    model's depth once its config is read)."""
    try:
        options = SpeedOptions.from_args(args, device)
    except ValueError as exc:
        return [str(exc)]
    out = options.problems(None)
    if getattr(args, "speed", "fast") == "naive" and options.device_type != "cuda":  # CPU runs are eager anyway
        out += [message for asked, message in ((options.offload_optimizer, OFFLOAD_NEEDS_FAST),
                                               (options.fp8_base, FP8_NEEDS_FAST)) if asked]
    if options.offload_optimizer:
        optimizer = getattr(args, "optimizer_type", "AdamW")
        if optimizer != "AdamW":
            out.append(f"--offload_optimizer implements AdamW; drop it or use --optimizer_type AdamW (got {optimizer})")
        if getattr(args, "mixed_precision", None) == "fp16":
            out.append("--offload_optimizer has no fp16 gradient scaling; use bf16")
    return out


def compiled_recompute(*, compile: bool, recompute: str, checkpointing: bool) -> bool:
    """Whether the compiled blocks do the recomputation themselves instead of diffusers' checkpointing."""
    return compile and recompute == "compiled" and checkpointing


def check_options(options: SpeedOptions, num_blocks: int, checkpointing: bool) -> bool:
    """Raise ValueError with `options.problems(...)` for a model of `num_blocks` blocks, if any (the device
    rule is the flags' check, `args_problems`); returns whether the compiled blocks recompute."""
    problems = options.problems(num_blocks, checkpointing, device=False)
    if problems:
        raise ValueError("; ".join(problems))
    return options.compiled_recompute(checkpointing)
