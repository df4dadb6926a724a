"""What the trainer asks of accelerate's data parallelism (DDP): whole model copies, the LoRA synced.

Every process loads the same frozen base from the same files, so DDP has nothing to do with it: it
must neither broadcast it from process 0 when wrapping the model (the base of LTX-2 19B is ~38 GB)
nor require it on the device of the LoRA (blocks swapped to pinned host memory, `--low_memory`
blocks kept on the CPU), nor re-broadcast buffers before every forward. Only the trainable
parameters are DDP's.
"""

from __future__ import annotations

import torch

# accelerate's kinds of distribution that shard or re-wrap the model: checkpoints, fp32 master weights
# and the speed options assume one whole model per process.
UNSUPPORTED_DISTRIBUTION = ("FSDP", "DEEPSPEED", "MEGATRON_LM", "XLA")


def check_distribution(distributed_type) -> None:
    """Raise `ValueError` for an accelerate config this trainer does not run (see docs/multi_gpu.md)."""
    name = getattr(distributed_type, "name", str(distributed_type))
    if name in UNSUPPORTED_DISTRIBUTION:
        raise ValueError(f"accelerate config: distributed_type {name} is not supported; use MULTI_GPU (data "
                         "parallel, one whole model per GPU: accelerate launch --multi_gpu), see docs/multi_gpu.md")


def leave_frozen_to_each_process(module: torch.nn.Module) -> list[str]:
    """Mark every frozen parameter and every buffer of `module` as DDP-ignored (before
    `accelerator.prepare`); returns their names. DDP then syncs and all-reduces the trainable ones only."""
    names = [name for name, p in module.named_parameters() if not p.requires_grad]
    names += [name for name, _ in module.named_buffers()]
    module._ddp_params_and_buffers_to_ignore = names  # read by torch's DistributedDataParallel
    return names
