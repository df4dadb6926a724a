"""Speed and memory levers for training the LTX-2 transformer on a GPU.

Each lever is a function that changes a diffusers `LTX2VideoTransformer3DModel` in place (or wraps
its trainable parameters) without touching diffusers' code, so the model stays the stock class
that saves, loads and samples like any other. Figures for each lever are in benchmarks/history.md.

- `compile_blocks`: `torch.compile` each transformer block (regional compilation: one graph reused
  by all 48 blocks, so it compiles once). Fuses RoPE, RMSNorm, modulation and gates and removes
  most of the per-op launch overhead that dominates the eager step. With a recompute policy or
  an activation memory budget the compiled block also does its own activation checkpointing:
  its backward graph recomputes only what backward needs, fused with the backward kernels, and
  keeps what the policy says (`keep_attention_policy`; `keep_matmul_outputs_policy` for blocks
  that recompute only elementwise work).
- `MasterWeights`: LoRA parameters compute in bf16 (no autocast casts, no fp32 copies of
  activations in peft) while the optimizer updates fp32 master copies.
- `quantize_base_weights`: frozen base `nn.Linear` weights stored as int8 with one scale per
  output row and dequantized to bf16 on use (forward, recompute and input-gradient), halving the
  weights' memory at bf16 matmul speed.
- `fp8_base_weights`: frozen base `nn.Linear` weights stored as e4m3 with one scale per output
  channel and multiplied in fp8 (`torch._scaled_mm`, activations and output gradients scaled per
  token), forward and input-gradient: half the weights' memory, a 12 % faster full-size step on an
  H100, within e4m3 rounding of bf16 (opt-in).
- `OffloadedAdamW` over `HostMasterWeights`: the fp32 masters and AdamW moments live in pinned CPU
  memory; each step's update is applied a few blocks at a time on the GPU during the next forward.
- `ActivationOffloader`: whole-block gradient checkpointing whose saved block inputs (the hidden
  states entering each block) wait in pinned CPU memory between forward and backward.
- `BlockSwapper`: the frozen weight matrices of N blocks live in pinned CPU memory and are copied to the GPU
  on a side stream ahead of use (with whole-block re-runs, or fetched back by a gradient hook
  before each block's backward).

One module per lever: `compile`, `optim/master_weights`, `optim/optimizer_offload`, `quant/int8`,
`quant/fp8` (both through `quant/base_linears`), `block_swap`, `activation_offload`; this package
re-exports them. Around them:
`options` (`SpeedOptions`: what a run asks for, `from_args`, and every rule about combining the levers in
`problems()`), `planner` (the memory planner: the fastest combination that fits a memory budget) and
`setup` (`apply_speed_options` -> `SpeedSetup`: the levers applied to a transformer, which it places;
backward, optimizer and update through it) and `run_plan` (a training run's plan, checked by its first
steps). docs/speed.md is the user's view.
"""

from .activation_offload import ActivationOffloader
from .block_swap import (LTX2_TEXT_KEYS_VALUES, BlockSwapper, ForwardOnly, available_host_memory, check_host_memory,
                         check_swap_count, evenly_spaced, spread_blocks)
from .compile import compile_blocks, keep_attention_policy, keep_matmul_outputs_policy
from .quant.fp8 import Fp8Linear, check_fp8_device, fp8_base_weights
from .quant.int8 import Int8WeightLinear, quantize_base_weights
from .optim.master_weights import MasterWeights
from .optim.optimizer_offload import HostMasterWeights, OffloadedAdamW, block_runs

__all__ = ["LTX2_TEXT_KEYS_VALUES", "ActivationOffloader", "BlockSwapper", "ForwardOnly", "Fp8Linear",
           "HostMasterWeights", "Int8WeightLinear", "MasterWeights", "OffloadedAdamW", "available_host_memory",
           "block_runs", "check_fp8_device", "check_host_memory", "check_swap_count", "compile_blocks",
           "evenly_spaced", "fp8_base_weights", "keep_attention_policy", "keep_matmul_outputs_policy",
           "quantize_base_weights", "spread_blocks"]
