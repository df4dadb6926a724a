"""int8 weight-only storage of the frozen base linear layers (dequantized to the compute dtype on use)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .base_linears import replace_base_linears


class _Int8Linear(torch.autograd.Function):
    """y = x @ dequant(q)^T + b, saving the int8 weight (not a bf16 copy) for the input gradient."""

    @staticmethod
    def forward(ctx, x, qweight, scale, bias):
        w = qweight.to(x.dtype) * scale.to(x.dtype)[:, None]
        ctx.save_for_backward(qweight, scale)
        return F.linear(x, w, bias)

    @staticmethod
    def backward(ctx, grad_out):
        qweight, scale = ctx.saved_tensors
        w = qweight.to(grad_out.dtype) * scale.to(grad_out.dtype)[:, None]
        return grad_out @ w, None, None, None


class Int8WeightLinear(nn.Module):
    """A frozen `nn.Linear` whose weight is int8 with a per-output-row absmax scale."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach()
        scale = w.float().abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale.to(torch.float32))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.compute_dtype = w.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (materialized on demand; training never calls this)."""
        return (self.qweight.float() * self.scale[:, None]).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _Int8Linear.apply(x, self.qweight, self.scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_base_weights(model_or_blocks: nn.Module | Iterable[nn.Module], min_features: int = 256) -> int:
    """Replace the frozen `nn.Linear`s inside the transformer's blocks (or inside the blocks given; PEFT base
    layers included) by `Int8WeightLinear`, quantized where the weights are; LoRA matrices and small layers
    stay as they are. Returns the count."""
    return replace_base_linears(model_or_blocks, Int8WeightLinear, min_features)
