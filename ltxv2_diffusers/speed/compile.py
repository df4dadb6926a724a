"""Regional `torch.compile` of the transformer blocks, with activation checkpointing inside the compiled
region (what each block keeps for backward instead of recomputing)."""

from __future__ import annotations

import functools
import types

import torch
from torch import nn

_ATTENTION_OPS = tuple(
    getattr(torch.ops.aten, name).default
    for name in ("_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention",
                 "_scaled_dot_product_efficient_attention", "_scaled_dot_product_flash_attention_for_cpu")
    if hasattr(torch.ops.aten, name)
)


@functools.cache  # one policy object per setting: models built with it share compiled graphs
def keep_attention_policy(min_attention_pairs: int = 1 << 24):
    """Selective-recompute policy: what a compiled block keeps for backward instead of recomputing.

    Keeps the outputs of attentions with at least `min_attention_pairs` query-key pairs; at
    768x512x121 that is only the video self-attention, one video-sized tensor per block (2.3 GiB
    over 48 blocks) that spares its forward recomputation, the most expensive op per byte kept
    (-40 ms/step on an H100, benchmarks/history.md). Everything else is recomputed inside the
    block's compiled backward.
    """
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        if op in _ATTENTION_OPS and args[0].shape[-2] * args[1].shape[-2] >= min_attention_pairs:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.PREFER_RECOMPUTE

    return policy


@functools.cache
def keep_matmul_outputs_policy():
    """Selective-recompute policy for blocks that recompute no matmul and no attention.

    Keeps every attention's outputs (cuDNN attention is not on the partitioner's list of expensive
    ops, so it could otherwise be recomputed) and leaves the rest to the partitioner, which this
    policy runs with `aggressive_recomputation`: it keeps the matmul outputs and recomputes the
    elementwise work between them (norms, modulation, RoPE, gates) inside backward's fused kernels
    instead of keeping its results. By default the partitioner keeps both a norm's input and its
    modulated output, and both a query/key before and after its norm and RoPE, since a matmul in
    backward reads them. At 768x512x121 this keeps ~0.79 GiB per block instead of ~1.11 GiB, for a
    few extra elementwise passes over video-sized tensors in backward (benchmarks/history.md).
    """
    from torch.utils.checkpoint import CheckpointPolicy

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in _ATTENTION_OPS else CheckpointPolicy.PREFER_SAVE

    policy.partitioner_config = {"aggressive_recomputation": True}
    return policy


def compile_blocks(transformer: nn.Module, dynamic: bool = False, mode: str | None = None, *,
                   recompute_policy=None, activation_memory_budget: float | None = None,
                   backend: str = "inductor") -> int:
    """`torch.compile` every transformer block's `forward` in place; returns how many were compiled.

    Only `forward` is compiled, not the module call, so module hooks (the block swapper's weight
    prefetch) run eagerly around the compiled code instead of being traced into it. Calling it
    again recompiles from the eager `forward` (after `torch._dynamo.reset()`).

    Activation checkpointing inside the compiled block (use with diffusers' own gradient
    checkpointing off): the block's backward graph recomputes what it needs, fused with the backward
    kernels, instead of re-running the whole forward. `recompute_policy` (a selective-checkpoint
    policy such as `keep_attention_policy()` or `keep_matmul_outputs_policy()`, or one per block,
    None for a block that keeps what the partitioner would) says what to keep (a policy's
    `partitioner_config` attribute, if any, patches `torch._functorch.config` while its graphs
    compile); or `activation_memory_budget` (0..1) lets the partitioner choose (0: keep only the
    block's inputs; 1: keep all it would). Blocks sharing a policy share one graph.
    """
    blocks = getattr(transformer, "transformer_blocks", None)
    if blocks is None:
        raise TypeError(f"{type(transformer).__name__} has no transformer_blocks to compile")
    if activation_memory_budget is not None and not 0.0 <= activation_memory_budget <= 1.0:
        raise ValueError(f"activation_memory_budget must lie in [0, 1], got {activation_memory_budget}")
    if recompute_policy is not None and activation_memory_budget is not None:
        raise ValueError("give either a recompute policy or an activation memory budget, not both")
    policies = recompute_policy if isinstance(recompute_policy, (list, tuple)) else [recompute_policy] * len(blocks)
    if len(policies) != len(blocks):
        raise ValueError(f"got {len(policies)} recompute policies for {len(blocks)} blocks")
    for block, policy in zip(blocks, policies):
        eager = vars(block).setdefault("_ltx_eager_forward", block.forward)
        target = eager if policy is None else _selectively_checkpointed(eager, policy)
        compiled = torch.compile(target, dynamic=dynamic, mode=mode, backend=backend)
        config = dict(getattr(policy, "partitioner_config", {}))
        if activation_memory_budget is not None:
            config["activation_memory_budget"] = activation_memory_budget
        block.forward = _with_partitioner_config(compiled, config) if config else compiled
    return len(blocks)


# policy id -> (policy, the wrapper's code for it); holding the policy keeps its id from being reused
_POLICY_CODES: dict[int, tuple[object, types.CodeType]] = {}


def _selectively_checkpointed(forward, policy):
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    def context():
        return create_selective_checkpoint_contexts(policy)

    def checkpointed(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, context_fn=context, **kwargs)

    # Dynamo keeps its compiled graphs per code object and does not guard on a checkpoint's context_fn:
    # blocks with different policies sharing this wrapper's code would run whichever graph compiled
    # first (measured: recomputing blocks ran the graph of blocks that recompute nothing). So each
    # policy gets its own copy of the code; blocks (and models) sharing a policy still share one graph.
    code = _POLICY_CODES.setdefault(
        id(policy), (policy, checkpointed.__code__.replace(co_name=f"checkpointed_policy_{len(_POLICY_CODES)}")))[1]
    return types.FunctionType(code, checkpointed.__globals__, checkpointed.__name__, checkpointed.__defaults__,
                              checkpointed.__closure__)


def _with_partitioner_config(compiled, config: dict):
    # The partitioner reads its config when a graph is (re)compiled, which happens inside the call.
    def forward(*args, **kwargs):
        with torch._functorch.config.patch(**config):
            return compiled(*args, **kwargs)

    return forward
