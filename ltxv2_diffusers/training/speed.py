"""How a training run uses the speed and memory levers of `models/acceleration.py`.

`SpeedOptions` is what the flags ask for; `apply_speed_options` changes the LoRA'd transformer
accordingly and returns a `SpeedSetup` that the trainer and `benchmarks/train_step.py` use the same
way: build the optimizer through it, run the step under its `autocast()`, and call
`before_optimizer_step()` / `after_optimizer_step()` around `optimizer.step()`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

from ltxv2_diffusers.models import acceleration


@dataclasses.dataclass
class SpeedOptions:
    """`naive`: autocast with fp32 LoRA weights (diffusers' documented recipe), eager.
    Otherwise: bf16 LoRA compute with fp32 master weights, fused AdamW, regional `torch.compile`
    (`compile`), an optional diffusers attention backend, and the low-memory levers."""

    naive: bool = False
    compile: bool = True
    attention_backend: str | None = None
    int8_base: bool = False
    blocks_to_swap: int = 0
    compute_dtype: torch.dtype = torch.bfloat16

    @classmethod
    def for_device(cls, device: str | torch.device, *, naive: bool = False, compile: bool = True,
                   attention_backend: str | None = None, low_memory: bool = False,
                   blocks_to_swap: int | None = None) -> "SpeedOptions":
        """Defaults per device: the fast path needs CUDA; on CPU the step stays eager in fp32."""
        cuda = torch.device(device).type == "cuda"
        if not cuda:
            if low_memory or blocks_to_swap:
                raise ValueError(f"--low_memory and --blocks_to_swap stream weights to a CUDA device; this run is on "
                                 f"{device}. Drop them, or run on a GPU.")
            return cls(naive=True, compile=False, compute_dtype=torch.float32)
        swap = blocks_to_swap if blocks_to_swap is not None else (8 if low_memory else 0)
        return cls(naive=naive, compile=compile and not naive, attention_backend=attention_backend,
                   int8_base=low_memory, blocks_to_swap=swap)

    def describe(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["compute_dtype"] = str(self.compute_dtype).replace("torch.", "")
        return d


@dataclasses.dataclass
class SpeedSetup:
    options: SpeedOptions
    trainable_params: list[torch.nn.Parameter]
    master: acceleration.MasterWeights | None = None
    swapper: acceleration.BlockSwapper | None = None
    device_type: str = "cpu"

    @property
    def optimizer_params(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (fp32 masters on the fast path)."""
        return self.master.master_params if self.master is not None else self.trainable_params

    def make_optimizer(self, cls=torch.optim.AdamW, **kwargs) -> torch.optim.Optimizer:
        """Build `cls` over `optimizer_params`; torch AdamW gets `fused=True` on CUDA."""
        if cls is torch.optim.AdamW and self.device_type == "cuda":
            kwargs.setdefault("fused", True)
        return cls(self.optimizer_params, **kwargs)

    def autocast(self):
        if self.options.naive and self.device_type == "cuda":
            return torch.autocast("cuda", dtype=self.options.compute_dtype)
        return contextlib.nullcontext()

    def accumulate_grads(self) -> None:
        """After each micro-batch's backward: move bf16 grads into the fp32 masters."""
        if self.master is not None:
            self.master.grads_to_master(accumulate=True)

    def before_optimizer_step(self) -> None:
        self.accumulate_grads()

    def after_optimizer_step(self) -> None:
        if self.master is not None:
            self.master.master_to_model()
            for m in self.master.master_params:
                m.grad = None
        self.reset()

    def reset(self) -> None:
        if self.swapper is not None:
            self.swapper.reset()


def apply_speed_options(transformer: torch.nn.Module, options: SpeedOptions,
                        device: str | torch.device = "cuda") -> SpeedSetup:
    """Apply `options` to a transformer that already carries its trainable LoRA."""
    device = torch.device(device)
    if options.int8_base:
        acceleration.quantize_base_weights(transformer)
    swapper = None
    if options.blocks_to_swap:
        if not transformer.is_gradient_checkpointing:
            raise ValueError("--blocks_to_swap needs --gradient_checkpointing (blocks are re-run in backward)")
        swapper = acceleration.BlockSwapper(transformer, options.blocks_to_swap, device=device)
    if options.attention_backend:
        transformer.set_attention_backend(options.attention_backend)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    master = None
    if not options.naive and options.compute_dtype != torch.float32:
        # The fast path runs natively in the compute dtype (no autocast), so the frozen base must be in it.
        for p in transformer.parameters():
            if not p.requires_grad and p.is_floating_point() and p.dtype != options.compute_dtype:
                p.data = p.data.to(options.compute_dtype)
        master = acceleration.MasterWeights(trainable, options.compute_dtype)
    else:
        for p in trainable:
            p.data = p.data.float()
    if options.compile:
        acceleration.compile_blocks(transformer)
    return SpeedSetup(options=options, trainable_params=trainable, master=master, swapper=swapper,
                      device_type=device.type)
