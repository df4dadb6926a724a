"""Find and replace the frozen base `nn.Linear` layers of the transformer blocks (quantized storage)."""

from __future__ import annotations

from typing import Callable, Iterable

from torch import nn


def transformer_blocks(model_or_blocks: nn.Module | Iterable[nn.Module]) -> Iterable[nn.Module]:
    """The blocks to quantize: a transformer's `transformer_blocks`, or the blocks given."""
    return getattr(model_or_blocks, "transformer_blocks", model_or_blocks)


def replace_base_linears(model_or_blocks: nn.Module | Iterable[nn.Module], make: Callable[[nn.Linear], nn.Module],
                         min_features: int = 256, accept: Callable[[nn.Linear], bool] | None = None) -> int:
    """Replace every frozen `nn.Linear` inside the transformer's blocks (or inside the blocks given; PEFT base
    layers included) by `make(linear)`; LoRA matrices, layers narrower than `min_features` and layers
    `accept` refuses stay as they are. Returns the count."""
    count = 0
    for block in transformer_blocks(model_or_blocks):
        for name, module in list(block.named_modules()):
            for child_name, child in list(module.named_children()):
                if not isinstance(child, nn.Linear) or child.weight.requires_grad:
                    continue
                if "lora_" in f"{name}.{child_name}" or min(child.in_features, child.out_features) < min_features:
                    continue
                if accept is not None and not accept(child):
                    continue
                setattr(module, child_name, make(child))
                count += 1
    return count
