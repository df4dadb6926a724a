"""A training run's memory plan: chosen before the model loads, held against the first steps' peak.

`RunPlan.make` gathers what the planner needs (the model's config, the largest batch, the LoRA's size,
the budget in GiB); `choose` returns the `SpeedOptions` with the levers the user left unset filled in;
`verdict` compares the first steps' measured peak with the budget and says whether to re-plan, and by
how much. The trainer only measures, prints and rebuilds.
"""

from __future__ import annotations

import dataclasses
import os

from . import planner
from .block_swap import available_host_memory
from .options import SpeedOptions

# What a first step that ran out of memory is taken to have needed, over the plan's prediction.
OUT_OF_MEMORY_CORRECTION = 1.25
# A re-plan aims this much below the measured error, so it is not right at the edge again.
REPLAN_MARGIN = 1.05


def host_memory(checkpoint_dtype: str | None = None) -> planner.Host | None:
    """This process's share of the host memory available now (the training processes on this host share
    it; None: unknown), for a checkpoint storing the blocks' weights as `checkpoint_dtype`."""
    available = available_host_memory()
    if available is None:
        return None
    share = available / max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return planner.Host(available=share, checkpoint_mapped=checkpoint_dtype == "BF16")


class PlanDoesNotFit(ValueError):
    """No combination of levers fits the budget; the message says what would."""


@dataclasses.dataclass
class Verdict:
    """The first steps' peak against the budget: `correction` is None when the plan is confirmed."""

    message: str
    correction: float | None = None


@dataclasses.dataclass
class RunPlan:
    requested: SpeedOptions  # what the user's flags ask for (the planner keeps the levers they set)
    figures: planner.ModelFigures
    workload: planner.Workload
    budget_gib: float
    host: planner.Host | None = None  # the host memory this process may pin (None: unknown)
    plan: planner.Plan | None = None  # the current choice (`choose`)
    host_note: str = ""  # why the current choice quantizes, where the host's free memory is the reason

    @classmethod
    def make(cls, requested: SpeedOptions, config: dict, largest: dict, *, mode: str, rank: int,
             target_options=None, lora_params: int | None = None, device=None,
             checkpoint_dtype: str | None = None) -> "RunPlan":
        """For a model of transformer `config`, whose largest batch is `largest` ({'batch', 'video',
        'audio'} tokens), with a LoRA of `rank` on `mode`'s targets (or of `lora_params` parameters, e.g.
        a `--network_weights` file's own size); `checkpoint_dtype`: how the checkpoint stores the blocks'
        weights ("BF16" ones stay memory-mapped until streamed; None: not known, assume they do not)."""
        figures = planner.ModelFigures.from_config(config, mode, rank, target_options,
                                                   min_features=requested.quantize_min_features)
        if lora_params is not None:
            figures = dataclasses.replace(figures, lora_params=int(lora_params))
        workload = planner.Workload(video_tokens=largest["video"], audio_tokens=largest["audio"],
                                    batch=largest["batch"])
        budget = planner.resolve_budget(requested.memory_budget, device)
        return cls(requested=requested, figures=figures, workload=workload, budget_gib=budget,
                   host=host_memory(checkpoint_dtype))

    def choose(self, correction: float = 1.0) -> SpeedOptions:
        """The options to apply: the fastest plan that fits (the budget scaled down by `correction`, a
        measured peak over the predicted one). Raises `PlanDoesNotFit` saying what would fit."""
        plan = planner.plan_for(self.requested, self.figures, self.workload, self.budget_gib, correction=correction,
                                host=self.host)
        self.plan, self.host_note = plan, self._host_note(plan, correction)
        if not plan.fits:
            raise PlanDoesNotFit(planner.explain(self.figures, self.workload, plan, self.host,
                                                 planner.fixed_levers(self.requested)))
        return planner.planned_options(self.requested, plan)

    def _host_note(self, plan: planner.Plan, correction: float) -> str:
        """Where the host's free memory made `plan` quantize: what a bf16 plan would pin and what is free."""
        if self.host is None or not plan.fits or plan.base == "bf16" or self.requested.fp8_base:
            return ""
        roomy = planner.plan_for(self.requested, self.figures, self.workload, self.budget_gib, correction=correction)
        if not (roomy.fits and roomy.base == "bf16"):
            return ""
        return (f" ({plan.base} base: a bf16 plan would pin {roomy.host_gib:.1f} GiB of host memory, "
                f"{self.host.available / planner.GiB:.1f} GiB is free for this process)")

    def describe(self) -> str:
        """The plan in one line; where the host's free memory made it quantize, why."""
        return self.plan.describe() + self.host_note if self.plan is not None else "memory plan: none"

    def verdict(self, peak: tuple[float, float] | None) -> Verdict:
        """Judge the first steps' (allocated, reserved) peak in GiB, None if they ran out of memory: over
        `CONFIRM_HEADROOM` of the budget (reserved) asks for a re-plan with the measured error."""
        limit = self.budget_gib * planner.CONFIRM_HEADROOM
        if peak is not None and peak[1] <= limit:
            return Verdict(f"memory plan confirmed: the first steps peaked at {peak[0]:.1f} GiB allocated, "
                           f"{peak[1]:.1f} GiB reserved (predicted {self.plan.peak_gib:.1f}; budget "
                           f"{self.budget_gib:.1f})")
        if peak is None:
            correction, what = OUT_OF_MEMORY_CORRECTION, "ran out of memory"
        else:
            correction = REPLAN_MARGIN * max(peak[1] / limit, peak[0] / self.plan.peak_gib)
            what = f"peaked at {peak[1]:.1f} GiB reserved"
        return Verdict(self._replanning(what, correction), correction)

    def overruled(self, correction: float) -> Verdict:
        """Another process went over the budget (a rebuild is collective: all re-plan, or none)."""
        return Verdict(self._replanning("went over the budget on another process", correction), correction)

    def _replanning(self, what: str, correction: float) -> str:
        return (f"memory plan: the first steps {what}, over {self.budget_gib * planner.CONFIRM_HEADROOM:.1f} GiB "
                f"of the {self.budget_gib:.1f} GiB budget; re-planning for {correction:.2f}x the predicted peak")
