"""bf16 compute for trainable parameters with fp32 master copies for the optimizer."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import nn
from torch._utils import _flatten_dense_tensors


def flat_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The tensors flattened and concatenated into one 1-D tensor. torch's C++ helper (the one DDP buckets
    with) instead of a Python reshape per tensor: about half the host time for the ~2k LoRA gradients of
    a step (measured on a CPU), which the CPU spends while the GPU finishes backward with little slack."""
    return _flatten_dense_tensors(tensors)


class MasterWeights:
    """Trainable parameters compute in `compute_dtype`; the optimizer steps one flat fp32 master.

    All trainable parameters become views of one flat `compute_dtype` buffer, and their fp32 masters
    are one flat parameter (`flat`), so moving gradients in, stepping the optimizer and copying the
    result back are a handful of kernels and almost no host work, not one Python operation per LoRA
    tensor (~2k of them on LTX-2: 38-68 ms of host time per step on the H100 hosts measured, part of
    which the GPU sat waiting for; now 15 ms, most of it gathering the gradients). `master_params` are per-parameter fp32 views of `flat` (checkpoints, restoring).

    Use: build the optimizer over `[flat]`, then per optimizer step call `grads_to_master()` after the
    backward passes, step, and `master_to_model()`. Gradient accumulation happens in the model
    parameters' dtype between those calls, so call `grads_to_master(accumulate=True)` after each
    micro-batch to keep accumulation in fp32.
    """

    def __init__(self, params: Iterable[nn.Parameter], compute_dtype: torch.dtype = torch.bfloat16):
        self.model_params = [p for p in params if p.requires_grad]
        if not self.model_params:
            raise ValueError("MasterWeights needs at least one trainable parameter")
        devices = {p.device for p in self.model_params}
        if len(devices) > 1:
            raise ValueError(f"trainable parameters are spread over {sorted(map(str, devices))}; move the model to "
                             "one device before building master weights")
        self.sizes = [p.numel() for p in self.model_params]
        with torch.no_grad():
            self.flat = nn.Parameter(torch.cat([p.detach().reshape(-1).float() for p in self.model_params]))
            self.flat_model = self.flat.detach().to(compute_dtype)
        self.master_params = self._views(self.flat.detach())
        for p, view in zip(self.model_params, self._views(self.flat_model)):
            p.data = view

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [v.view(p.shape) for v, p in zip(flat.split(self.sizes), self.model_params)]

    @torch.no_grad()
    def grads_to_master(self, accumulate: bool = False) -> None:
        """Move model gradients into the fp32 master's gradient (summing into it when accumulating)."""
        grads = [p.grad for p in self.model_params]
        if all(g is None for g in grads):
            return
        if any(g is None for g in grads):  # a parameter this forward did not use
            grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, self.model_params)]
        flat = flat_cat(grads)  # one kernel for ~2k tensors
        if accumulate and self.flat.grad is not None:
            self.flat.grad.add_(flat)  # adds in fp32
        else:
            self.flat.grad = flat.float()
        for p in self.model_params:
            p.grad = None

    @torch.no_grad()
    def master_to_model(self) -> None:
        """Copy the updated fp32 masters into the compute-dtype model parameters."""
        self.flat_model.copy_(self.flat)

    def zero_grad(self) -> None:
        self.flat.grad = None

    def state_dict(self) -> list[torch.Tensor]:
        return [m.detach().clone() for m in self.master_params]

    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for m, t in zip(self.master_params, tensors):
                m.copy_(t)
        self.master_to_model()

    def optimizer_state_from_per_parameter(self, state: dict[str, Any]) -> dict[str, Any]:
        """An optimizer state saved over one master per parameter (checkpoints written before masters
        were flat) in the layout of an optimizer over `[flat]`; other states come back unchanged."""
        groups = state.get("param_groups", [])
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.model_params) or len(self.model_params) == 1:
            return state
        ids = groups[0]["params"]
        per_param = [state["state"].get(i, {}) for i in ids]
        merged: dict[str, Any] = {}
        for key, first in per_param[0].items():
            values = [s.get(key) for s in per_param]
            if all(torch.is_tensor(v) and v.numel() == n and v.dim() > 0 for v, n in zip(values, self.sizes)):
                merged[key] = torch.cat([v.reshape(-1) for v in values])  # elementwise state (Adam moments)
            elif key == "step" and all(v is not None and float(v) == float(first) for v in values):
                merged[key] = first
            else:  # e.g. blockwise-quantized states: their blocks do not concatenate
                raise ValueError(f"its optimizer state ({key!r}) was saved per LoRA tensor and cannot be merged "
                                 "into one flat fp32 master; resume it with the version that wrote it, or start over")
        return {"state": {0: merged} if merged else {}, "param_groups": [{**groups[0], "params": [0]}]}
