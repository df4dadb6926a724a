"""fp8 frozen base linear layers: e4m3 weights with one scale per output channel, multiplied in fp8.

The forward quantizes each token's activations to e4m3 with a scale of its own and multiplies with
`torch._scaled_mm` (row-wise scales, output in the activations' dtype); the input gradient does the
same with the output gradient, whose columns first take the weight's per-channel scales, since
there they lie on the contracted axis. Hopper and Ada tensor cores are rated at twice the bf16 rate
for fp8 (a full-size LTX-2 step: 12 % faster, benchmarks/history.md), and the weights take half the
memory and half the host-link bytes when swapped.
Results differ from bf16 by e4m3's rounding (3 mantissa bits: about 3.6 % of a random matmul's
output), which is why this is a lever the user opts into, like the int8 weights. The LoRA beside
each layer still reads the bf16 activations and trains in bf16.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .base_linears import replace_base_linears

E4M3_MAX = float(torch.finfo(torch.float8_e4m3fn).max)  # 448
MIN_CAPABILITY = (8, 9)  # Ada; Hopper is (9, 0)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(q, scale)` with `x ≈ q * scale`: `q` in e4m3, one fp32 scale per row (`[..., 1]`)."""
    xf = x.float()
    scale = xf.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return (xf / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale


# How the fp8 products take their scales. "rowwise": `torch._scaled_mm` with per-row and per-column
# scales (on an H200 with PyTorch 2.11, cuBLASLt's outer-vector-scaled kernel); "rowwise_fast": the same with fast accumulation; "tensorwise": unit
# scales (cuBLAS's own fp8 kernel), the scales applied by a pass over the output, which a compiled block
# fuses into whatever consumes it. PyTorch reports its row-wise kernel slower than cuBLAS, above all without
# fast accumulation (pytorch/pytorch#147971), but in the full-size compiled step on an H200 row-wise and
# tensor-wise took the same GPU time within 1 % (benchmarks/RESULTS.md), so the default is the one without
# an extra pass. `benchmarks/fp8_matmul.py` times the ways per layer; `train_step.py --fp8_scaling` per step.
SCALINGS = ("rowwise", "rowwise_fast", "tensorwise")
scaling = "rowwise"


def _scaled_matmul(q, weight_t, row_scale, col_scale, dtype: torch.dtype, how: str | None = None) -> torch.Tensor:
    """`(q * row_scale) @ (weight_t * col_scale)` returning `dtype` (`col_scale` None: no column scales),
    scaled as `how` says (default: the module's `scaling`). On CUDA scaled fp8 matmuls here return bf16, so
    other dtypes (fp16 or fp32 activations, e.g. under fp16 autocast) are cast from it."""
    how = how or scaling
    out_dtype = torch.bfloat16 if q.is_cuda else dtype
    if how == "tensorwise":
        one = torch.ones((), dtype=torch.float32, device=q.device)
        out = torch._scaled_mm(q, weight_t, scale_a=one, scale_b=one, out_dtype=out_dtype)
        out = out * row_scale if col_scale is None else out * row_scale * col_scale
    else:
        if col_scale is None:
            col_scale = torch.ones(1, weight_t.shape[1], dtype=torch.float32, device=q.device)
        out = torch._scaled_mm(q, weight_t, scale_a=row_scale, scale_b=col_scale, out_dtype=out_dtype,
                               use_fast_accum=how == "rowwise_fast")
    return out.to(dtype)  # the same tensor when it already is


class _Fp8Matmul(torch.autograd.Function):
    """`x @ (qweight * scale.T)^T` in fp8 (`scale`: `[1, out]`); saves only the fp8 weight and its scales."""

    @staticmethod
    def forward(ctx, x, qweight, scale):
        rows = x.reshape(-1, x.shape[-1])
        q, row_scale = quantize_rows(rows)
        out = _scaled_matmul(q, qweight.t(), row_scale, scale, x.dtype)
        ctx.save_for_backward(qweight, scale)
        return out.view(*x.shape[:-1], qweight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        qweight, scale = ctx.saved_tensors
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        q, row_scale = quantize_rows(rows.float() * scale)
        # fp8 matmuls want both operands contiguous along the contracted axis, here the output channels.
        # Transposing in every backward costs a full-size compiled step about 20 ms. Keeping a transposed copy
        # instead doubles the fp8 weights' memory, and with streamed blocks the step got slower (RESULTS.md).
        by_input = qweight.t().contiguous()
        grad = _scaled_matmul(q, by_input.t(), row_scale, None, grad_out.dtype)
        return grad.view(*grad_out.shape[:-1], qweight.shape[1]), None, None


class Fp8Linear(nn.Module):
    """A frozen `nn.Linear` whose weight is e4m3 with one absmax scale per output channel, applied
    with fp8 matmuls. `device` (optional) is where the quantization runs; the result goes back to
    the layer's own device."""

    def __init__(self, linear: nn.Linear, device: torch.device | str | None = None):
        super().__init__()
        w = linear.weight.detach()
        q, scale = quantize_rows(w.to(device) if device is not None else w)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("qweight", q.to(w.device))
        self.register_buffer("scale", scale.view(1, -1).to(w.device))  # [1, out]: the shape the matmul takes
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self.compute_dtype = w.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (materialized on demand; training never calls this)."""
        return (self.qweight.float() * self.scale.view(-1, 1)).to(self.compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Fp8Matmul.apply(x, self.qweight, self.scale)
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3"


def fp8_supported(linear: nn.Linear) -> bool:
    """fp8 matmuls need both of a layer's sizes to be multiples of 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def check_fp8_device(device: torch.device | str) -> None:
    """Raise unless `device` multiplies in fp8: a CUDA GPU of compute capability 8.9+ (Ada, Hopper,
    Blackwell), or the CPU (slow; tests)."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_CAPABILITY:
        raise ValueError(f"--fp8_base needs fp8 matmuls (compute capability 8.9+: Ada, Hopper or newer); "
                         f"{torch.cuda.get_device_name(device)} is sm_{capability[0]}{capability[1]}. Drop it, or use "
                         "--low_memory (int8 weights at bf16 matmul speed).")


def fp8_base_weights(model_or_blocks: nn.Module | Iterable[nn.Module], min_features: int = 256,
                     device: torch.device | str | None = None) -> int:
    """Replace the frozen `nn.Linear`s inside the transformer's blocks (or inside the blocks given; PEFT base
    layers included) by `Fp8Linear`, quantizing on `device` if given; LoRA matrices, small layers and layers
    whose sizes fp8 matmuls cannot take stay as they are. Returns the count."""
    return replace_base_linears(model_or_blocks, lambda linear: Fp8Linear(linear, device), min_features,
                                accept=fp8_supported)
