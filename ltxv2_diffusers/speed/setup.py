"""How a training run uses the speed and memory levers of this package.

`SpeedOptions` is what the flags ask for; `apply_speed_options` places the training model, changes the
LoRA'd transformer accordingly and returns a `SpeedSetup`, which the trainer and `benchmarks/train_step.py`
use the same way: the optimizer built through it (`make_optimizer`), each forward under its `autocast()`
and each micro-batch under its `gradient_sync()`, the backward through `backward()`, then
`before_optimizer_step()`, `clip_grad_norm()` and `update()` (the step, skipped on the device where
non-finite, and `after_optimizer_step()`); `flush()` before anything reads the LoRA.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging

import torch

from .activation_offload import ActivationOffloader
from .block_swap import LTX2_TEXT_KEYS_VALUES, BlockSwapper, evenly_spaced
from .compile import compile_blocks, keep_attention_policy, keep_matmul_outputs_policy
from .options import SpeedOptions, check_options
from .optim.master_weights import MasterWeights
from .optim.optimizer_offload import HostMasterWeights, OffloadedAdamW
from .quant.fp8 import check_fp8_device, fp8_base_weights
from .quant.int8 import quantize_base_weights

logger = logging.getLogger("ltxv2_diffusers.training")


@dataclasses.dataclass
class SpeedSetup:
    options: SpeedOptions
    trainable_params: list[torch.nn.Parameter]
    master: MasterWeights | None = None
    swapper: BlockSwapper | None = None
    device_type: str = "cpu"
    recompute: str = "none"  # who recomputes activations in backward, in words
    optimizer: torch.optim.Optimizer | None = None  # the one `make_optimizer` built
    quantized_layers: int = 0  # base linears int8 or fp8 replaced
    activations: ActivationOffloader | None = None  # block inputs in host memory (`offload_activations`)

    def summary(self) -> str:
        """One line for the run's log: compute dtype, compilation, recomputation, memory levers."""
        o = self.options
        parts = ["naive (autocast, fp32 LoRA)" if o.naive and self.device_type == "cuda" else
                 f"{str(o.compute_dtype).replace('torch.', '')} compute" +
                 (" with fp32 master weights" if self.master is not None else ""),
                 "compiled blocks" if o.compile else "eager", f"recompute: {self.recompute}"]
        if o.int8_base:
            parts.append(f"int8 base weights ({self.quantized_layers} layers)")
        if o.fp8_base:
            parts.append(f"fp8 base weights and matmuls ({self.quantized_layers} layers)")
        if self.swapper is not None:
            how = ("re-fetched by the backward re-run" if self.swapper.rerun_in_backward
                   else "spread, fetched back before their backward")
            parts.append(f"{o.blocks_to_swap} blocks swapped to CPU ({how})")
            if self.swapper.forward_stores:
                parts.append(f"the text keys' and values' weights of {len(self.swapper.forward_stores)} of them "
                             "fetched by the forward only")
        if o.attention_backend:
            parts.append(f"attention backend {o.attention_backend}")
        if self.offloaded:
            parts.append("fp32 masters and AdamW moments in CPU memory, applied during the next forward")
        return "speed: " + ", ".join(parts)

    @property
    def offloaded(self) -> bool:
        return isinstance(self.master, HostMasterWeights)

    @property
    def optimizer_params(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (one flat fp32 master on the fast path)."""
        return [self.master.flat] if self.master is not None else self.trainable_params

    def make_optimizer(self, cls=torch.optim.AdamW, **kwargs) -> torch.optim.Optimizer:
        """Build `cls` over `optimizer_params`; torch AdamW gets `fused=True`, or becomes
        `OffloadedAdamW` (same kernel, state in host memory) with `offload_optimizer`."""
        if self.offloaded:
            if cls is not torch.optim.AdamW:
                raise ValueError(f"--offload_optimizer implements AdamW, not {cls.__name__}; drop one of them")
            self.optimizer = OffloadedAdamW(self.master, **kwargs)
            return self.optimizer
        if cls is torch.optim.AdamW:  # one kernel; and it can skip a non-finite step by itself (`skip_if`)
            kwargs.setdefault("fused", True)
        self.optimizer = cls(self.optimizer_params, **kwargs)
        return self.optimizer

    @property
    def skips_on_device(self) -> bool:
        """Whether the optimizer `make_optimizer` built can skip a step on the device's own verdict
        (`skip_if`), so the host need not wait for it: torch's fused AdamW and `OffloadedAdamW` can."""
        opt = self.optimizer
        if isinstance(opt, OffloadedAdamW):
            return True
        return isinstance(opt, torch.optim.AdamW) and all(g.get("fused") for g in opt.param_groups)

    def skip_if(self, found_inf: torch.Tensor | None) -> None:
        """Make the next `optimizer.step()` leave weights, moments and step count as they are where the
        0-d float tensor `found_inf` is 1 (None: always step); needs `skips_on_device`."""
        if found_inf is not None and not self.skips_on_device:
            raise ValueError(f"{type(self.optimizer).__name__} cannot skip a step on the device")
        self.optimizer.found_inf = found_inf  # read by fused AdamW's step, like GradScaler's

    def clip_grad_norm(self, max_norm: float, accelerator=None) -> torch.Tensor:
        """Clip the gradients the optimizer will step to a total norm of `max_norm`; returns the norm."""
        if self.offloaded:
            return self.master.clip_grad_norm_(max_norm)
        if accelerator is not None:  # unscales fp16 gradients first
            return accelerator.clip_grad_norm_(self.optimizer_params, max_norm)
        return torch.nn.utils.clip_grad_norm_(self.optimizer_params, max_norm)

    def flush(self) -> None:
        """Make the model's LoRA tensors current for what the device runs next (an offloaded optimizer
        applies updates lazily, during the next forward); call before saving or sampling."""
        if isinstance(self.optimizer, OffloadedAdamW):
            self.optimizer.apply_pending()

    def autocast(self, accelerator=None):
        """Around a forward (not its backward): the naive path's autocast, and `accelerator`'s (mixed
        precision as the run configured it; the trainer disables it where the fast path computes in bf16)."""
        stack = contextlib.ExitStack()
        if accelerator is not None:
            stack.enter_context(accelerator.autocast())
        if self.options.naive and self.device_type == "cuda":
            stack.enter_context(torch.autocast("cuda", dtype=self.options.compute_dtype))
        return stack

    def gradient_sync(self, accelerator=None, model=None, *, last: bool = True, processes: int = 1):
        """Around one micro-batch's forward and backward: under DDP, no gradient sync for every micro-batch
        of an optimizer step but the `last`. Not with fp32 masters: they take each micro-batch's gradients
        out of the model, so every micro-batch's gradients must be synced before they move."""
        if accelerator is None or last or processes == 1 or self.master is not None:
            return contextlib.nullcontext()
        return accelerator.no_sync(model)

    def update(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None, *,
               found_inf: torch.Tensor | None = None, apply: bool = True) -> None:
        """One optimizer step through `optimizer` (the one `make_optimizer` built, or accelerate's wrapper
        of it), then `after_optimizer_step`. `found_inf`: a 0-d tensor, 1 where the device must skip the
        update (`skip_if`); `apply=False`: the host decided to skip it."""
        if found_inf is not None:
            self.skip_if(found_inf)
        if apply:
            optimizer.step()
        self.after_optimizer_step(optimizer, model)

    def accumulate_grads(self) -> None:
        """After each micro-batch's backward: move bf16 grads into the fp32 masters."""
        if self.master is not None:
            self.master.grads_to_master(accumulate=True)

    def backward(self, loss: torch.Tensor, accelerator=None) -> None:
        """One micro-batch's backward (through `accelerator` when given: DDP's gradient sync, fp16's loss
        scaling), its gradients then moved into the fp32 masters."""
        if accelerator is not None:
            accelerator.backward(loss)
        else:
            loss.backward()
        self.accumulate_grads()

    def before_optimizer_step(self) -> None:
        self.accumulate_grads()

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer | None = None,
                             model: torch.nn.Module | None = None) -> None:
        """After `optimizer.step()` (or a skipped step): the fp32 masters into the compute-dtype LoRA, every
        gradient cleared (`optimizer`'s; `model`'s where no masters took them), the swapper ready for the
        next step."""
        if self.master is not None:
            if not self.offloaded:  # an offloaded optimizer refreshes the model itself, chunk by chunk
                self.master.master_to_model()
            self.master.zero_grad()
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        if model is not None and self.master is None:  # grads a skipped step left (masters took them otherwise)
            model.zero_grad(set_to_none=True)
        self.reset()

    def reset(self) -> None:
        """Between steps: the swapper ready for the next forward; block inputs an interrupted step left
        in host memory dropped."""
        if self.swapper is not None:
            self.swapper.reset()
        if self.activations is not None:
            self.activations.reset()


def freeze_host_objects() -> None:
    """Call once the first step has run (model built, blocks compiled): collect garbage, then move
    every object alive now out of the collector's way. Full collections otherwise walk those millions
    of objects every so often, a host pause of tens of milliseconds in the middle of a step whose
    CPU only runs a little ahead of the GPU (median 1.104 -> 1.098 s/step on an H100, less spread)."""
    import gc

    gc.collect()
    gc.freeze()


def thaw_host_objects() -> None:
    """Undo `freeze_host_objects` once training is over (objects it froze that became cyclic garbage are
    collected again)."""
    import gc

    gc.unfreeze()


def apply_speed_options(transformer: torch.nn.Module, options: SpeedOptions,
                        device: str | torch.device = "cuda", *, model: torch.nn.Module | None = None) -> SpeedSetup:
    """Apply `options` to a transformer that already carries its trainable LoRA, and place `model` (the
    module holding the transformer, e.g. the training adapter; default the transformer) on `device`.

    Owns where every weight lives and in which dtype: streamed blocks' weights go straight from the CPU
    to pinned host memory and only the rest is moved, so the GPU never holds all of them; the frozen base
    runs in the compute dtype, the LoRA in it too with fp32 master weights (or in fp32 on the eager path).
    """
    device = torch.device(device)
    if options.gradient_checkpointing is not None and \
            options.gradient_checkpointing != transformer.is_gradient_checkpointing:
        if options.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        else:
            transformer.disable_gradient_checkpointing()
    _recompute_inside(transformer, options)  # checks the options before the model changes
    quantize = _base_quantizer(options, device)
    # Blocks to quantize or stream stay where they loaded until their turn (below).
    _place_outside_blocks(model if model is not None else transformer, transformer, options, device,
                          move_blocks=not (options.blocks_to_swap or quantize))
    fast = not options.naive and options.compute_dtype != torch.float32
    # The fast path runs natively in the compute dtype (no autocast), so the frozen base must be in it
    # before blocks are swapped (their host copies are made in it).
    cast = _cast_frozen if fast else (lambda module, dtype: None)
    prepare, counts = None, []
    if quantize is not None:
        # Block by block: to the device, quantized there (fast), then kept there or copied to host memory by
        # the swapper; never the whole model at once in its quantized form, on the device or in host memory.
        def prepare(block):
            block.to(device)
            counts.append(quantize(block))
            cast(block, options.compute_dtype)
    else:
        cast(transformer, options.compute_dtype)
    swapper = make_swapper(transformer, options, device, prepare=prepare)
    if prepare is not None:
        streamed = set(swapper.swapped) if swapper is not None else set()
        for i, block in enumerate(transformer.transformer_blocks):
            if i not in streamed:
                prepare(block)
        cast(transformer, options.compute_dtype)  # what lies outside the blocks
    quantized = sum(counts)
    if quantize is not None and not quantized:
        logger.warning("%s: no frozen linear layer of the transformer blocks is at least %d wide, so none "
                       "was quantized (a small test model?)",
                       "--fp8_base" if options.fp8_base else "--low_memory's int8", options.quantize_min_features)
    transformer.to(device)
    if options.attention_backend:
        transformer.set_attention_backend(options.attention_backend)
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the transformer has no trainable parameter: add the LoRA before the speed options")
    master = None
    if fast and options.offload_optimizer:
        master = HostMasterWeights(trainable, list(transformer.transformer_blocks), options.compute_dtype)
    elif fast:
        master = MasterWeights(trainable, options.compute_dtype)
    else:  # autocast computes in the low dtype; the weights it trains stay fp32
        for p in trainable:
            p.data = p.data.float()
    activations = None
    if options.offload_activations:  # diffusers' re-runs, with the block inputs in host memory meanwhile
        activations = ActivationOffloader(device)
        transformer.enable_gradient_checkpointing(activations.checkpoint)
    recompute = configure_recompute(transformer, options)
    if activations is not None:
        recompute += ", block inputs in host memory"
    return SpeedSetup(options=options, trainable_params=trainable, master=master, swapper=swapper,
                      device_type=device.type, recompute=recompute, quantized_layers=quantized,
                      activations=activations)


def _place_outside_blocks(model: torch.nn.Module, transformer: torch.nn.Module, options: SpeedOptions,
                          device: torch.device, move_blocks: bool) -> None:
    """Move `model` to `device`; unless `move_blocks`, all but the transformer blocks (placed one by one
    later: streamed or quantized). Parameter identities are kept, so LoRA parameters collected earlier stay
    valid."""
    if move_blocks:
        model.to(device)
        return
    blocks = {id(m) for m in transformer.transformer_blocks.modules()}
    for m in model.modules():
        if id(m) in blocks:
            continue
        for p in m._parameters.values():
            if p is not None:
                p.data = p.data.to(device)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = b.to(device)


def blocks_without_recompute(transformer: torch.nn.Module, options: SpeedOptions) -> set[int]:
    """Indices of the blocks `options` exempt from recomputation."""
    k, n = options.blocks_without_recompute, len(transformer.transformer_blocks)
    if not k:
        return set()
    if options.without_recompute_placement == "last":
        return set(range(n - k, n))
    return set(evenly_spaced(n, k))


def _base_quantizer(options: SpeedOptions, device: torch.device):
    """`quantize(block) -> count` for the int8 or fp8 base `options` ask for (None for neither)."""
    if options.fp8_base:
        check_fp8_device(device)
        return lambda block: fp8_base_weights([block], options.quantize_min_features, device=device)
    if options.int8_base:
        return lambda block: quantize_base_weights([block], options.quantize_min_features)
    return None


def _cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """The frozen floating-point parameters of `module` in `dtype` (LoRA weights are left as they are)."""
    for p in module.parameters():
        if not p.requires_grad and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def make_swapper(transformer: torch.nn.Module, options: SpeedOptions,
                 device: str | torch.device = "cuda", prepare=None) -> BlockSwapper | None:
    """The block swapper `options` ask for (None without `blocks_to_swap`); call before
    `configure_recompute`, with diffusers' gradient checkpointing as the user set it. `prepare`: see
    `BlockSwapper`."""
    if not options.blocks_to_swap:
        return None
    inside = _recompute_inside(transformer, options)
    checkpointing = transformer.is_gradient_checkpointing
    rerun = checkpointing and not inside
    # blocks whose backward recomputes nothing, so never reads the text keys' and values' weights
    if not options.split_forward_only or rerun:
        plain = set()
    elif inside:
        plain = blocks_without_recompute(transformer, options) if options.activation_memory_budget is None else set()
    else:
        plain = set(range(len(transformer.transformer_blocks)))
    return BlockSwapper(transformer, options.blocks_to_swap, device=torch.device(device),
                       rerun_in_backward=rerun, forward_only=LTX2_TEXT_KEYS_VALUES, forward_only_blocks=plain,
                       prepare=prepare)


def _recompute_inside(transformer: torch.nn.Module, options: SpeedOptions) -> bool:
    """`check_options` for this model."""
    return check_options(options, len(transformer.transformer_blocks), transformer.is_gradient_checkpointing)


def configure_recompute(transformer: torch.nn.Module, options: SpeedOptions) -> str:
    """Compile the blocks (if asked) with the recomputation `options` choose; call with diffusers'
    gradient checkpointing as the user set it. Again after `torch._dynamo.reset()` to switch.
    Returns who recomputes activations in backward, in words."""
    inside = _recompute_inside(transformer, options)
    exempt = blocks_without_recompute(transformer, options)
    checkpointing = transformer.is_gradient_checkpointing
    budget = options.activation_memory_budget
    if inside:
        transformer.disable_gradient_checkpointing()  # the compiled blocks recompute instead
    if options.compile:
        policy = keep_attention_policy() if inside and budget is None else None
        if policy is not None and options.blocks_without_recompute:
            lean = keep_matmul_outputs_policy() if options.lean_without_recompute else None
            policy = [lean if i in exempt else policy for i in range(len(transformer.transformer_blocks))]
        compile_blocks(transformer, mode=options.compile_mode, recompute_policy=policy,
                                    activation_memory_budget=budget, backend=options.compile_backend)
    if inside:
        if budget is not None:
            return f"inside compiled blocks, activation memory budget {budget}"
        k = options.blocks_without_recompute
        where = "the last" if options.without_recompute_placement == "last" else "spread over the model:"
        what = "only elementwise work" if options.lean_without_recompute else "nothing"
        more = f" ({where} {k} block{'s' if k > 1 else ''} recompute {what})" if k else ""
        return "inside compiled blocks, keeping large self-attention outputs" + more
    return "whole blocks (torch.utils.checkpoint)" if checkpointing else "none"
