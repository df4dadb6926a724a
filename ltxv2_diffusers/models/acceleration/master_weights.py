"""bf16 compute for trainable parameters with fp32 master copies for the optimizer."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class MasterWeights:
    """Trainable parameters compute in `compute_dtype`; the optimizer steps fp32 master copies.

    Use: build the optimizer over `master_params`, then per optimizer step call
    `grads_to_master()` after the backward passes, step, and `master_to_model()`. Gradient
    accumulation happens in the model parameters' dtype between those calls, so call
    `grads_to_master(accumulate=True)` after each micro-batch to keep accumulation in fp32.
    """

    def __init__(self, params: Iterable[nn.Parameter], compute_dtype: torch.dtype = torch.bfloat16):
        self.model_params = [p for p in params if p.requires_grad]
        self.master_params = [nn.Parameter(p.detach().float().clone()) for p in self.model_params]
        for p in self.model_params:
            p.data = p.data.to(compute_dtype)

    @torch.no_grad()
    def grads_to_master(self, accumulate: bool = False) -> None:
        """Move model gradients into the fp32 masters (summing into existing ones when accumulating)."""
        pairs = [(p, m) for p, m in zip(self.model_params, self.master_params) if p.grad is not None]
        if not pairs:
            return
        fresh = [(p, m) for p, m in pairs if not accumulate or m.grad is None]
        summed = [(p, m) for p, m in pairs if accumulate and m.grad is not None]
        # One multi-tensor kernel per group instead of one launch per parameter (there are ~2k).
        if fresh:  # one allocation, viewed per parameter
            flat = torch.empty(sum(m.numel() for _, m in fresh), dtype=torch.float32, device=fresh[0][1].device)
            for view, (_, m) in zip(flat.split([m.numel() for _, m in fresh]), fresh):
                m.grad = view.view_as(m)
            torch._foreach_copy_([m.grad for _, m in fresh], [p.grad for p, _ in fresh])
        if summed:
            torch._foreach_add_([m.grad for _, m in summed], [p.grad for p, _ in summed])  # adds in fp32
        for p, _ in pairs:
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Copy the updated fp32 masters into the compute-dtype model parameters."""
        torch._foreach_copy_([p.data for p in self.model_params], [m.data for m in self.master_params])

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.master_params]

    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for m, t in zip(self.master_params, tensors):
                m.copy_(t)
        self.master_to_model()
