"""The in-memory LoRA every file format is read into and written from.

Module names are diffusers `LTX2VideoTransformer3DModel` module paths. Each module keeps its own
`alpha`, so the effective update is `strength * (alpha / rank) * up @ down`; formats that fold
alpha into `up` are read with `alpha == rank`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


class NonFiniteWeights(ValueError):
    """Weights hold NaN/inf: nothing is written from them (the last good files stay as they are)."""


@dataclass
class LoraModuleWeights:
    """One adapted linear layer: `down` (= PEFT `lora_A`) `[rank, in]`, `up` (`lora_B`) `[out, rank]`."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    def __post_init__(self):
        if self.down.ndim != 2 or self.up.ndim != 2 or self.down.shape[0] != self.up.shape[1]:
            raise ValueError(
                f"LoRA down {tuple(self.down.shape)} / up {tuple(self.up.shape)} are not a rank-r pair "
                "([rank, in] and [out, rank])"
            )
        self.alpha = float(self.alpha)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def folded_up(self, device: torch.device | str | None = None) -> torch.Tensor:
        """`up * alpha/rank` in float32 (the official/ComfyUI layout stores this, with no alpha)."""
        up = self.up.to(device=device, dtype=torch.float32)
        return up if self.alpha == self.rank else up * self.scale

    def delta(self, strength: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
        """The float32 weight update `strength * alpha/rank * up @ down` (on `device`, default: the LoRA's).

        Computed as `(folded_up * strength) @ down`, the same order ltx-core uses on the folded
        file, so fusing from any format gives bit-identical weights in float32.
        """
        down = self.down.to(device=device, dtype=torch.float32)
        return torch.matmul(self.folded_up(device) * strength, down)


@dataclass
class LoraWeights:
    """A LoRA for the LTX-2 transformer: modules by diffusers name, plus string metadata."""

    modules: dict[str, LoraModuleWeights]
    metadata: dict[str, str] = field(default_factory=dict)
    source_format: str | None = None

    def __post_init__(self):
        if not self.modules:
            raise ValueError("a LoRA needs at least one module")
        # One canonical order (files come back key-sorted), so LoRAs compare equal across formats.
        self.modules = dict(sorted(self.modules.items()))

    @property
    def ranks(self) -> set[int]:
        return {m.rank for m in self.modules.values()}

    @property
    def alphas(self) -> set[float]:
        return {m.alpha for m in self.modules.values()}

    def main_rank_alpha(self) -> tuple[int, float]:
        """The most common (rank, alpha) pair; formats with one global value write this one."""
        counts: dict[tuple[int, float], int] = {}
        for m in self.modules.values():
            counts[(m.rank, m.alpha)] = counts.get((m.rank, m.alpha), 0) + 1
        return max(counts, key=counts.__getitem__)

    def nonfinite(self) -> list[str]:
        """Names of modules whose alpha or weights hold NaN/inf (a LoRA that would break any model)."""
        bad = []
        for name, m in self.modules.items():
            if not math.isfinite(m.alpha) or not (torch.isfinite(m.down).all() and torch.isfinite(m.up).all()):
                bad.append(name)
        return bad

    def check_finite(self, what: str) -> None:
        """Raise `NonFiniteWeights` naming `what` (a file) and the first bad modules when any value is NaN/inf."""
        bad = self.nonfinite()
        if bad:
            raise NonFiniteWeights(f"{what}: {len(bad)} of {len(self.modules)} LoRA modules hold NaN/inf values "
                             f"(e.g. {bad[:3]}); this LoRA is unusable")

    def to(self, dtype: torch.dtype) -> "LoraWeights":
        """A copy with all tensors in `dtype` (alpha is unchanged)."""
        return LoraWeights(
            {n: LoraModuleWeights(m.down.to(dtype), m.up.to(dtype), m.alpha) for n, m in self.modules.items()},
            dict(self.metadata),
            self.source_format,
        )
