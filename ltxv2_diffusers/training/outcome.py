"""One optimizer step's verdict and logs on their way from the device to the host.

The host must not wait for the GPU between steps: each wait leaves the GPU idle until the host has
queued the next step's first kernels, and the forward's host work runs only a little ahead of the GPU
anyway. So a step's values (is any loss or the gradient norm non-finite, on any rank; the logged
means) are gathered into one small device vector and copied to page-locked host memory behind the
step's own work. The optimizer skips a non-finite step on the device from `found_inf` (torch's fused
AdamW and `OffloadedAdamW` take it), and the trainer `read`s the outcome once the next step is
queued, when the values have long arrived.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums a device tensor over every process


class StepOutcome:
    """The outcome of optimizer step `step`: `found_inf` on the device now, `read()` on the host later.

    `checks` are the values that must all be finite (losses, the gradient norm); `logs` are device or
    host scalars, averaged over processes through `reduce_sum` when `world_size` > 1.
    """

    def __init__(self, step: int, checks: Sequence[torch.Tensor], logs: dict[str, torch.Tensor | float],
                 device: torch.device, *, reduce_sum: Reduce | None = None, world_size: int = 1,
                 finished_epochs: Sequence[int] = ()):
        self.step = step
        self.finished_epochs = list(finished_epochs)
        self.keys = sorted(logs)
        device = torch.device(device)

        def scalar(value) -> torch.Tensor:
            return torch.as_tensor(value, device=device).detach().double().reshape(())

        bad = torch.stack([(~torch.isfinite(scalar(v))) for v in checks]).any().double() if checks else scalar(0.0)
        vec = torch.stack([bad] + [scalar(logs[k]) for k in self.keys])
        if world_size > 1:
            vec = reduce_sum(vec)
            vec = torch.cat([vec[:1], vec[1:] / world_size])  # every rank logs the mean
        # 1.0 where any rank saw a non-finite value: the fused AdamW kernels then leave everything as it was
        self.found_inf = (vec[0] > 0).float()
        self._ready: torch.cuda.Event | None = None
        if device.type == "cuda":
            self._host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
            self._host.copy_(vec, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record()
        else:
            self._host = vec
        self._values: tuple[bool, dict[str, float]] | None = None
        self.extra: dict[str, float] = {}  # host values logged with the step (fp16's grad norm)
        self.timing: tuple[float, float] = (0.0, 0.0)  # the trainer's (step_time, average s/step)
        self.items: list[str] = []  # the keys of the step's items, named when it turns out non-finite

    def read(self) -> tuple[bool, dict[str, float]]:
        """(whether every check was finite on every rank, the logs as floats); waits only for this
        step's values, not for work queued after them."""
        if self._values is None:
            if self._ready is not None:
                self._ready.synchronize()
            values = self._host.tolist()
            self._values = (values[0] == 0.0, dict(zip(self.keys, values[1:])))
        return self._values[0], dict(self._values[1])
