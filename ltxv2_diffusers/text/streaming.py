"""Text encoders larger than the GPU's free memory: some decoder layers streamed from pinned host memory.

Gemma 3 12B takes 24 GB in bf16, so on a 24 GB card (and on any card while the training model holds most of
it, when preview prompts are encoded at start) it cannot sit on the GPU whole. `place_text_encoder` moves
it whole when it fits the free memory (less room for encoding a few prompts); otherwise the last layers of
its decoder stay in pinned host memory and each is copied to the GPU one layer ahead of use, by the same
`BlockSwapper` that streams the transformer's blocks in training. A batch is encoded in as many passes as
the memory left needs. Encoding gives the same result either way.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
from torch import nn

from ltxv2_diffusers.speed.block_swap import BlockSwapper, streamed_bytes

logger = logging.getLogger(__name__)

GiB = 2**30
MARGIN = int(1.5 * GiB)  # kept free besides the model and the batch (allocator slack, kernels' workspaces)
IN_FLIGHT = 2  # streamed layers on the GPU at once: the one running and the one being fetched
RESERVED_PROMPTS = 4  # prompts a pass must hold before layers are streamed (fewer passes: fewer copies)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of repeated blocks holding most of the model's weights (Gemma's decoder layers)."""
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 1]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no list of layers to stream")
    return max(lists, key=lambda m: sum(p.numel() for p in m.parameters()))


def module_bytes(module: nn.Module) -> int:
    """Bytes of all of `module`'s parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def layers_to_stream(total: int, layer: int, num_layers: int, available: int) -> int:
    """How many of `num_layers` layers (`layer` bytes each of the model's `total`) to stream so that the
    model fits `available` bytes of GPU memory; raises when even streaming all but one would not."""
    if total <= available:
        return 0
    if layer <= 0:
        raise ValueError(f"the text encoder ({total / GiB:.1f} GiB) does not fit the {available / GiB:.1f} GiB free "
                         "for it, and it has no layer to stream")
    count = math.ceil((total + IN_FLIGHT * layer - available) / layer)
    if count > num_layers - 1:
        needed = total - (num_layers - 1 - IN_FLIGHT) * layer
        raise ValueError(f"the text encoder needs at least {needed / GiB:.1f} GiB of free GPU memory even with "
                         f"{num_layers - 1} of its {num_layers} layers streamed from host memory; "
                         f"{available / GiB:.1f} GiB is free for it")
    return count


def stream_layers(model: nn.Module, count: int, device: torch.device | str) -> BlockSwapper:
    """Keep the last `count` decoder layers' weights in (pinned) host memory and fetch each ahead of use;
    call `reset()` on the result after every forward. Move the model to `device` afterwards."""
    model.requires_grad_(False)  # the swapper streams frozen tensors
    advice = (f"streaming {count} text-encoder layers",
              "free host memory, or cache the prompts on a GPU with more free memory (preview prompts: "
              "ltxv2-cache-text-encoder-outputs --sample_prompts)")
    return BlockSwapper(_Layers(decoder_layers(model)), count, device, rerun_in_backward=True, host_advice=advice)


def device_free_memory(device: torch.device) -> int:
    """Bytes a new model could take on the GPU: what the driver has free plus what PyTorch's allocator holds
    unused (after a training step, most of the card)."""
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + cached


@dataclasses.dataclass(frozen=True)
class TextPlan:
    """How a text encoder runs on a GPU: decoder layers streamed, and prompts encoded per forward pass (None:
    all at once)."""

    streamed: int
    prompts_per_pass: int | None


def plan_text_encoder(total: int, layer: int, num_layers: int, free: int, per_prompt: int) -> TextPlan:
    """The plan for a model of `total` bytes (`num_layers` layers of `layer` bytes) on a GPU with `free` bytes:
    room is kept for `RESERVED_PROMPTS` prompts of `per_prompt` bytes each (for one where even that does not
    fit) before layers are streamed, and a pass encodes as many prompts as the memory left holds."""
    available = free - MARGIN
    try:
        streamed = layers_to_stream(total, layer, num_layers, available - RESERVED_PROMPTS * per_prompt)
    except ValueError:  # too tight for passes of several prompts: one prompt a pass
        streamed = layers_to_stream(total, layer, num_layers, available - per_prompt)
    resident = total - streamed * layer + (IN_FLIGHT * layer if streamed else 0)
    return TextPlan(streamed, max(1, int((available - resident) // max(per_prompt, 1))))


def encoding_bytes_per_prompt(num_hidden_states: int, max_length: int, width: int, dtype: torch.dtype) -> int:
    """GPU memory encoding one prompt takes at its peak: every hidden state is kept (the LTX-2 text path reads
    them all), then stacked into one tensor beside them, plus the layer's own work (about half as much)."""
    states = num_hidden_states * max_length * width * torch.tensor([], dtype=dtype).element_size()
    return int(2.5 * states)


def place_text_encoder(model: nn.Module, device: torch.device | str, per_prompt: int,
                       free: int | None = None) -> tuple[BlockSwapper | None, TextPlan]:
    """Move `model` to `device` as `plan_text_encoder` says for the device's free memory (`free`, read now
    when None). Returns the swapper (None when the model sits on the device whole, as on a CPU unless `free`
    is given) and the plan."""
    device = torch.device(device)
    model.requires_grad_(False)  # frozen: its matrices are what a streamed layer moves
    plan = TextPlan(0, None)
    if device.type == "cuda" or free is not None:  # on a CPU only when told a size (tests)
        free = device_free_memory(device) if free is None else free
        layers = decoder_layers(model)
        layer = max(map(streamed_bytes, layers))
        plan = plan_text_encoder(module_bytes(model), layer, len(layers), free, per_prompt)
    swapper = stream_layers(model, plan.streamed, device) if plan.streamed else None
    model.to(device)
    if swapper is not None:
        logger.warning("text encoder: %d of its %d decoder layers streamed from host memory, %d prompt(s) per "
                       "pass (%.1f GiB of GPU memory free)", plan.streamed, len(decoder_layers(model)),
                       plan.prompts_per_pass, free / GiB)
    return swapper, plan


class _Layers:
    """What `BlockSwapper` reads of a model: its list of blocks."""

    def __init__(self, layers: nn.ModuleList):
        self.transformer_blocks = layers
