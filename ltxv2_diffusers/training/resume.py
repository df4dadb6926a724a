"""What a resume may change: flags that give the training another meaning, and the item set.

A checkpoint continues one run. A resumed command with another rank, learning rate, schedule, seed or
accumulation would mix two runs into one LoRA (or fail deep inside the optimizer), so such a change is
an error listing old → new values, unless `--resume_override NAME` accepts it on purpose. Items added to
or removed from the dataset only change the data order from then on: a warning says how many.

The number of processes may change on resume: what must stay is the global batch (each dataset's
`batch_size` per process x processes), since the data position is counted in global batches and the
loss is averaged over them. Another global batch is a warning saying which `batch_size` keeps it.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Sequence

logger = logging.getLogger("ltxv2_diffusers.training")

# Flags (by dest) whose change makes a resumed run another training than the one checkpointed.
MEANING_FLAGS = (
    "mode", "ltxv2_timestep_format", "network_module", "network_dim", "network_alpha", "network_args",
    "learning_rate", "lr_scheduler", "lr_warmup_steps", "optimizer_type", "adam_beta1", "adam_beta2",
    "adam_weight_decay", "adam_epsilon", "max_grad_norm", "seed", "gradient_accumulation_steps",
    "weighting_scheme", "video_loss_weight", "audio_loss_weight", "independent_audio_sigmas",
    "timestep_sampling", "min_timestep", "max_timestep", "sigma_sampling", "discrete_flow_shift", "sigmoid_scale",
    "logit_std", "shifted_logit_mode", "ltx_version", "preserve_distribution_shape",
)


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def changed_flags(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`{flag: (saved value, current value)}` for every meaning flag both runs know that differs."""
    out = {}
    for name in MEANING_FLAGS:
        if name in saved and name in now and _normal(saved[name]) != _normal(now[name]):
            out[name] = (saved[name], now[name])
    return out


def check_resume_flags(saved: dict[str, Any], now: dict[str, Any], overrides: Iterable[str], checkpoint) -> None:
    """Raise `ValueError` listing changed meaning flags that `--resume_override` does not name."""
    overrides = {o.lstrip("-") for o in overrides or ()}
    unknown = sorted(overrides - set(MEANING_FLAGS))
    if unknown:
        raise ValueError(f"--resume_override {' '.join(unknown)}: not a flag a resume checks; choose among "
                         f"{', '.join(MEANING_FLAGS)}")
    changed = changed_flags(saved, now)
    accepted = {k: v for k, v in changed.items() if k in overrides}
    for name, (old, new) in accepted.items():
        logger.warning("--resume: --%s changes from %r to %r (accepted by --resume_override)", name, old, new)
    refused = {k: v for k, v in changed.items() if k not in overrides}
    if refused:
        listed = ", ".join(f"--{k} {old!r} -> {new!r}" for k, (old, new) in refused.items())
        raise ValueError(f"--resume {checkpoint}: flags differ from the checkpointed run ({listed}); use the saved "
                         f"values, or accept the change with --resume_override {' '.join(refused)}")


def report_item_changes(saved_keys: Sequence[str] | None, keys: Sequence[str], checkpoint) -> None:
    """Warn when the items differ from those the checkpointed run trained on."""
    if saved_keys is None:
        return
    before, now = set(saved_keys), set(keys)
    removed, added = sorted(before - now), sorted(now - before)
    if removed or added:
        logger.warning("--resume %s: %d item(s) removed%s and %d added%s since the checkpoint; the data order "
                       "from here on differs from the original run's", checkpoint, len(removed),
                       f" (e.g. {removed[:3]})" if removed else "", len(added),
                       f" (e.g. {added[:3]})" if added else "")


def batching_change(saved: dict[str, Any] | None, now: dict[str, Any], checkpoint) -> tuple[str, str] | None:
    """`("warning" | "info", message)` when the processes or the global batches (per `[[datasets]]` entry)
    differ from the checkpointed run's, as recorded by `TrainData.batching()`; None when unchanged or
    not recorded (older checkpoints)."""
    if not saved:
        return None
    old_n, new_n = int(saved["processes"]), int(now["processes"])
    old, new = [int(b) for b in saved["global_batch_sizes"]], [int(b) for b in now["global_batch_sizes"]]
    if old == new:
        if old_n == new_n:
            return None
        return "info", (f"--resume {checkpoint}: saved by {old_n} process(es), continuing on {new_n} with the same "
                        f"global batch ({', '.join(map(str, new))} item(s) per step and dataset)")
    keep = [f"{b // new_n}" if b % new_n == 0 else f"(none: {b} does not split over {new_n})" for b in old]
    return "warning", (f"--resume {checkpoint}: the global batch changes from {old} to {new} item(s) per dataset "
                       f"(batch_size per process x {old_n} -> {new_n} processes); the data order and the averaged "
                       f"loss differ from the checkpointed run's. For the same training set batch_size = "
                       f"{', '.join(keep)} in the dataset config")
