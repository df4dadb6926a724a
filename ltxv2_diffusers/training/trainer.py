"""The accelerate training loop: data stream, optimizer steps, non-finite guard, saves, previews, logs.

Order of work in `Trainer.run`: validate (done by the CLI) → data (fails on missing caches before any
model loads) → model + LoRA → optimizer/scheduler → resume → loop → final LoRA, loss plot, Hub push.

The loop never waits for the GPU between steps: step k's verdict and logs (`training/outcome.py`) are
read once step k+1 is queued, and the optimizer skips a non-finite step on the device.

Determinism: every item's sigma and noise come from a generator seeded by (seed, step, micro-batch,
position in the global batch), so neither the number of processes nor a resume changes them. Each
optimizer step consumes `gradient_accumulation_steps` global batches; with N processes every process
takes its contiguous 1/N of each global batch (the dataset's `batch_size` is per process, as in musubi).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from ltxv2_diffusers import plugins
from ltxv2_diffusers.lora import NonFiniteWeights, target_options_from_network_args
from ltxv2_diffusers.speed.options import SpeedOptions, check_options
from ltxv2_diffusers.speed.pinned import release_cached_pinned_memory
from ltxv2_diffusers.speed.run_plan import PlanDoesNotFit, RunPlan
from ltxv2_diffusers.speed.setup import apply_speed_options, freeze_host_objects, thaw_host_objects
from ltxv2_diffusers.training import checkpoints as ckpt
from ltxv2_diffusers.training.args import args_to_dict, network_kwargs
from ltxv2_diffusers.training.data import TrainData
from ltxv2_diffusers.training.ddp import check_distribution, leave_frozen_to_each_process
from ltxv2_diffusers.training.hub import HubUploadError, push_lora
from ltxv2_diffusers.training.logging import MetricsLog
from ltxv2_diffusers.training.model import (
    build_training_model,
    checkpoint_weights_dtype,
    continued_lora_parameters,
    model_config,
    render_previews,
    save_lora_files,
)
from ltxv2_diffusers.training.outcome import StepOutcome
from ltxv2_diffusers.training.plotting import plot_loss_curve
from ltxv2_diffusers.training.prefetch import Prefetcher
from ltxv2_diffusers.training.resume import batching_change, check_resume_flags, report_item_changes
from ltxv2_diffusers.training.run_lock import OutputDirBusy, OutputDirLock
from ltxv2_diffusers.training.step import TrainStep

logger = logging.getLogger("ltxv2_diffusers.training")


class TrainingFailed(RuntimeError):
    """A run stopped early for a reason the user can act on; the message says what to change."""


class TrainingDiverged(TrainingFailed):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


class TrainingOutOfMemory(TrainingFailed):
    """The GPU ran out of memory during a step; the message names the memory flags."""


def _free_memory() -> None:
    """Collect what is unreachable now and hand the GPU memory PyTorch keeps cached back to the device."""
    import gc

    gc.collect()
    torch.cuda.empty_cache()  # a no-op where CUDA was never used


def _is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether `exc` is, or was raised from, a CUDA out-of-memory error (plugins wrap what they raise)."""
    import torch

    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def item_seed(seed: int, step: int, micro: int, index: int) -> int:
    """Seed of one item's randomness (sigma + noise) in a given optimizer step."""
    mixed = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + micro * 0x94D049BB133111EB + index * 0x2545F491)
    return mixed % (2**63 - 1)


class Trainer:
    """Runs one training job from validated args (see `training.args.parse_args`)."""

    def __init__(self, args):
        self.args = args
        self.output_dir = Path(args.output_dir)
        self.progress = ckpt.TrainingProgress()
        self.checkpoints = ckpt.CheckpointDir(self.output_dir)
        self.last_good_checkpoint: Path | None = None
        self._checkpoint_step = -1
        self.previews_written: list[Path] = []
        self.metrics = MetricsLog(Path(args.logging_dir) / "metrics.jsonl")
        self.memory_plan = None  # the run's memory plan (speed/run_plan.py), when a budget applies
        self.lock = OutputDirLock(self.output_dir)
        self._resume_from: Path | None = None

    # ------------------------------------------------------------------ setup
    def _setup_accelerator(self):
        from datetime import timedelta

        from accelerate import Accelerator
        from accelerate.utils import (
            AutocastKwargs, DistributedDataParallelKwargs, InitProcessGroupKwargs, ProjectConfiguration, set_seed,
        )

        args = self.args
        log_with = None if args.log_with == "none" else args.log_with
        # The fast path (speed/setup.py) computes in bf16 natively; autocast would only add the
        # fp32 round trips of norms and casts that path exists to avoid.
        native_bf16 = getattr(args, "speed", "fast") == "fast" and torch.cuda.is_available()
        handlers = [AutocastKwargs(enabled=False)] if native_bf16 else []
        if getattr(args, "ddp_timeout", None):  # NCCL's own default (10 min) is shorter than a preview round
            handlers.append(InitProcessGroupKwargs(timeout=timedelta(minutes=args.ddp_timeout)))
        ddp = {name: True for name in ("gradient_as_bucket_view", "find_unused_parameters")
               if getattr(args, f"ddp_{name}", False)}
        if ddp:
            handlers.append(DistributedDataParallelKwargs(**ddp))
        self.accelerator = Accelerator(
            # On a host without CUDA, cpu=True is what makes torchrun workers join one gloo group.
            cpu=not torch.cuda.is_available(),
            mixed_precision=args.mixed_precision,
            kwargs_handlers=handlers or None,
            log_with=log_with,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(args.logging_dir)),
        )
        check_distribution(self.accelerator.distributed_type)
        set_seed(args.seed)  # LoRA init; per-item sigma/noise use their own generators
        world = self.accelerator.num_processes
        self.world_size = world
        self.rank = self.accelerator.process_index
        if self.accelerator.is_main_process:
            try:
                self.lock.acquire()  # before anything in the folder is touched: another run may be writing it
            except OutputDirBusy as exc:
                raise TrainingFailed(str(exc)) from None
            except OSError as exc:
                raise TrainingFailed(f"--output_dir {self.output_dir}: cannot write there ({exc})") from None
            if self.lock.unprotected:
                logger.warning("--output_dir %s: %s", self.output_dir, self.lock.unprotected)
            if self.lock.taken_over:
                logger.warning("--output_dir %s: the run that held it (%s) ended without releasing it; taking over",
                               self.output_dir, self.lock.taken_over)
            removed = self.checkpoints.clean_partial() + ckpt.clean_partial_files(self.output_dir)
            for path in removed:
                logger.warning("removed a file a crash left half-written: %s", path)
        self.accelerator.wait_for_everyone()

    def _setup_data(self):
        # The main process checks the caches first; the others then find its record of checked files
        # (data/validation.py) instead of all reading every cache file at once.
        with self.accelerator.main_process_first():
            self.data = TrainData(self.args, world_size=self.world_size)
        if self.data.dropped_per_epoch and self.accelerator.is_main_process:
            logger.warning("%d item(s) per epoch are left out: their buckets' last batches do not split over %d "
                           "processes", self.data.dropped_per_epoch, self.world_size)
        per_epoch = self.data.batches_per_epoch()
        accum = self.args.gradient_accumulation_steps
        if self.world_size > 1:
            sizes = self.data.batching()["global_batch_sizes"]
            self.accelerator.print(f"global batch: {', '.join(map(str, sizes))} item(s) (each dataset's batch_size x "
                                   f"{self.world_size} processes) x {accum} per optimizer step")
        if self.args.max_train_epochs is not None:
            self.max_steps = math.ceil(self.args.max_train_epochs * per_epoch / accum)
        else:
            self.max_steps = int(self.args.max_train_steps)

    def _check_block_counts(self, options) -> None:
        """Block counts in the speed flags against the model's depth, from its config, before the weights
        load (a 19B load takes minutes); models whose config cannot be read are checked after loading."""

        if not (options.blocks_to_swap or options.blocks_without_recompute):
            return
        config = model_config(self.args)
        if config is None or "num_layers" not in config:
            return
        try:
            check_options(options, int(config["num_layers"]), options.checkpointing)
        except ValueError as exc:
            raise TrainingFailed(f"{exc} (--ltxv2_model {self.args.ltxv2_model})") from None

    def _plan_memory(self, options):
        """With a memory budget on CUDA: the memory plan for this model and the largest batch, made before
        any weight loads (None without a budget, or when the model's config cannot be read here)."""
        if not options.planned:
            return None
        config = model_config(self.args)
        if config is None:
            self.accelerator.print("memory plan: none (the model's config cannot be read before loading); "
                                   "using the advanced flags as given")
            return None
        args = self.args
        targets = target_options_from_network_args(network_kwargs(args))
        return RunPlan.make(options, config, self.data.manager.largest_batch(), mode=args.mode.value,
                            rank=args.network_dim, target_options=targets,
                            lora_params=continued_lora_parameters(args), device=self.accelerator.device,
                            checkpoint_dtype=checkpoint_weights_dtype(args))

    def _setup_model(self, correction: float = 1.0):
        args, device = self.args, self.accelerator.device
        if correction == 1.0:
            self.requested = SpeedOptions.from_args(args, device)
            self._check_block_counts(self.requested)
            self.memory_plan = self._plan_memory(self.requested)
        options = self.requested
        if self.memory_plan is not None:
            try:
                options = self.memory_plan.choose(correction)
            except PlanDoesNotFit as exc:
                raise TrainingFailed(str(exc)) from None
            finally:
                self.accelerator.print(self.memory_plan.describe())
        # Previews render on the main process only: the others need neither the decoders nor the prompts.
        previews_here = self._previews_enabled() and self.accelerator.is_main_process
        self.bundle = build_training_model(args, keep_preview_parts=previews_here)
        self.speed = apply_speed_options(self.bundle.transformer, options, device=device, model=self.bundle.adapter)
        self.accelerator.print(self.speed.summary())
        self.optimizer = self._make_optimizer()
        from diffusers.optimization import get_scheduler

        # Not passed through accelerator.prepare: it would step once per process and make the schedule
        # depend on the number of processes.
        self.lr_scheduler = get_scheduler(
            args.lr_scheduler, optimizer=self.optimizer, num_warmup_steps=args.lr_warmup_steps,
            num_training_steps=self.max_steps,
        )
        if self.world_size > 1:
            leave_frozen_to_each_process(self.bundle.adapter)
        self.adapter, self.optimizer = self.accelerator.prepare(self.bundle.adapter, self.optimizer)
        self.step_fn = TrainStep(self.adapter, args)

    @property
    def plan(self):
        """The memory planner's current choice, when a budget applies."""
        return self.memory_plan.plan if self.memory_plan is not None else None

    def _make_optimizer(self):
        args = self.args
        kwargs = dict(lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                      weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
        cls = torch.optim.AdamW
        if args.optimizer_type == "AdamW8bit":
            import bitsandbytes as bnb

            cls = bnb.optim.AdamW8bit
        return self.speed.make_optimizer(cls, **kwargs)

    def _previews_enabled(self) -> bool:
        a = self.args
        return bool(a.sample_prompts and (a.sample_every_n_steps or a.sample_every_n_epochs or a.sample_at_first))

    def _check_resume(self):
        """Find the checkpoint to resume from (the newest intact one for `latest`) and check that this
        run's flags and items continue it, before the model loads; a fresh run starts fresh logs."""

        path = ckpt.resolve_resume(self.args.resume, self.output_dir)
        self._check_same_checkpoint(path)
        if path is None:
            if self.args.resume == "latest" and self.accelerator.is_main_process:
                logger.warning("--resume latest: no checkpoint in %s yet, starting from scratch", self.output_dir)
            if self.accelerator.is_main_process:
                self.metrics.truncate_after(0)  # a previous run's lines are not this run's
            return
        saved = ckpt.saved_args(path)
        check_resume_flags(saved, args_to_dict(self.args), self.args.resume_override or (), path)
        if self.accelerator.is_main_process:
            report_item_changes(ckpt.saved_items(path), self.data.item_keys(), path)
            change = batching_change(ckpt.saved_batching(path), self.data.batching(), path)
            if change:
                (logger.warning if change[0] == "warning" else self.accelerator.print)(change[1])
        self._resume_from = path

    def _check_same_checkpoint(self, path: Path | None) -> None:
        """Every process must resume from the same checkpoint: on several machines an --output_dir that is
        not one shared folder would let one machine start from scratch while another resumes."""
        if self.world_size == 1:
            return
        from accelerate.utils import gather_object

        seen = gather_object([None if path is None else str(path)])
        if len(set(seen)) > 1:
            found = ", ".join(f"process {i}: {s or 'none'}" for i, s in enumerate(seen))
            raise TrainingFailed(f"--resume {self.args.resume}: the processes found different checkpoints ({found}); "
                                 "on several machines --output_dir must be a folder every machine shares")

    def _resume(self):
        path = self._resume_from
        if path is None:
            return
        model = self.accelerator.unwrap_model(self.adapter)
        self.progress = ckpt.load_training_state(path, model, self.optimizer, self.lr_scheduler,
                                                 master=self.speed.master)
        self.last_good_checkpoint = path
        self._checkpoint_step = self.progress.global_step
        if self.accelerator.is_main_process:
            self.metrics.truncate_after(self.progress.global_step)
        self.accelerator.print(f"resumed from {path} at step {self.progress.global_step}")

    def _confirm_plan(self, stream):
        """Run the first batch's forward and backward twice (the second starts with every weight the first
        step's backward left on the GPU), without an update, and hold the peak against the memory budget
        (`RunPlan.verdict`): over it, or out of memory, re-plan once with the measured error and rebuild the
        model, instead of failing later. Returns the stream with that batch still first."""

        first = next(stream)
        verdict = self.memory_plan.verdict(self._probe(first))
        if self.world_size > 1:  # every process re-plans, or none: a rebuild is collective
            worst = torch.tensor([verdict.correction or 0.0], device=self.accelerator.device)
            worst = float(self.accelerator.reduce(worst, reduction="max"))
            if worst and verdict.correction is None:
                verdict = self.memory_plan.overruled(worst)
            elif worst:
                verdict.correction = max(verdict.correction, worst)
        self.accelerator.print(verdict.message)
        if verdict.correction is not None:
            self._teardown_model()
            self._setup_model(correction=verdict.correction)
            self._resume()
        return _prepend(first, stream)

    def _probe(self, entry, passes: int = 2) -> tuple[float, float] | None:
        """(allocated, reserved) GiB at the peak of `passes` forwards and backwards of `entry`'s batch, or
        None when they ran out of memory; the gradients are discarded."""
        acc, device = self.accelerator, self.accelerator.device
        _, _, batch = entry
        local = self._local(batch)
        offset = local.pop("_global_offset")
        self.adapter.train()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        peak = None
        try:
            for _ in range(passes):
                gens = self._generators(self.progress.global_step, 0, offset, len(local["keys"]))
                with self.speed.autocast(acc):
                    loss, _ = self.step_fn(local, gens)
                acc.backward(loss)
                loss = None
                acc.unwrap_model(self.adapter).zero_grad(set_to_none=True)
            torch.cuda.synchronize(device)
            peak = (torch.cuda.max_memory_allocated(device) / 2**30, torch.cuda.max_memory_reserved(device) / 2**30)
        except torch.OutOfMemoryError:
            pass
        loss = None
        self._discard_step()
        return peak

    def _discard_step(self) -> None:
        """Drop what an unfinished step left (its gradients, in the fp32 masters too; fetched blocks; block
        inputs in host memory) and give its memory back."""
        self.accelerator.unwrap_model(self.adapter).zero_grad(set_to_none=True)
        if self.speed.master is not None:
            self.speed.master.zero_grad()
        self.speed.reset()
        _free_memory()

    def _teardown_model(self) -> None:
        """Drop the model, its speed setup and optimizer (before `_setup_model` builds them again)."""
        for name in ("adapter", "optimizer", "lr_scheduler", "step_fn", "bundle", "speed"):
            setattr(self, name, None)
        self.accelerator.free_memory()  # accelerate's own references to the prepared model and optimizer
        torch._dynamo.reset()
        _free_memory()
        release_cached_pinned_memory()  # the old plan's streamed blocks, which the new plan may size otherwise

    # ------------------------------------------------------------------ the loop
    def _batch_stream(self):
        """(epoch, index_in_epoch, global batch) from the current data position on, epochs without end."""
        epoch, start = self.progress.epoch, self.progress.batch_in_epoch
        while True:
            for index, batch in self.data.iter_epoch(epoch, start=start):
                yield epoch, index, batch
            epoch, start = epoch + 1, 0

    def _pinned(self, entry):
        """Prefetch step (background thread): page-locked batch tensors, so their copy to the GPU does not
        block the CPU from queueing work."""
        epoch, index, batch = entry
        if self.accelerator.device.type == "cuda":
            batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        return epoch, index, batch

    def _local(self, batch: dict[str, Any]) -> dict[str, Any]:
        """This process's slice of a global batch, moved to its device."""
        size = len(batch["keys"])
        if size % self.world_size:
            raise ValueError(f"a global batch of {size} items does not split over {self.world_size} processes; "
                             "set the dataset's batch_size to a multiple of the number of processes")
        per = size // self.world_size
        lo, hi = self.rank * per, (self.rank + 1) * per
        out = {}
        for key, value in batch.items():
            value = value[lo:hi]
            if isinstance(value, torch.Tensor):
                value = value.to(self.accelerator.device, non_blocking=value.is_pinned())
            out[key] = value
        out["_global_offset"] = lo
        return out

    def _generators(self, step: int, micro: int, offset: int, n: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(item_seed(self.args.seed, step, micro, offset + i)) for i in range(n)]

    def _queue_step(self, stream) -> StepOutcome:
        """Forward and backward of one optimizer step's `gradient_accumulation_steps` global batches, the
        gradients into the fp32 masters and clipped, all queued on the device; returns the step's outcome
        on its way to the host. The update itself is `_update`'s."""
        args, acc = self.args, self.accelerator
        accum = args.gradient_accumulation_steps
        step = self.progress.global_step
        sums: dict[str, Any] = {}
        losses: list[torch.Tensor] = []
        finished_epochs: list[int] = []
        keys: list[str] = []
        per_epoch = self.data.batches_per_epoch()
        for micro in range(accum):
            epoch, index, batch = next(stream)
            self.progress.epoch = epoch
            self.progress.batch_in_epoch = index + 1
            if index + 1 == per_epoch:
                finished_epochs.append(epoch + 1)
            keys += batch["keys"]
            local = self._local(batch)
            offset = local.pop("_global_offset")
            gens = self._generators(step, micro, offset, len(local["keys"]))
            with self.speed.gradient_sync(acc, self.adapter, last=micro == accum - 1, processes=self.world_size):
                with self.speed.autocast(acc):
                    loss, logs = self.step_fn(local, gens)
                # Backward runs whatever the loss is, so the host never waits for the forward to finish
                # before queueing it; a non-finite loss only leaves gradients the step discards.
                self.speed.backward(loss / accum, acc)
            losses.append(loss)
            for key, value in logs.items():  # summed on the device, read with the verdict
                sums[key] = sums.get(key, 0.0) + torch.as_tensor(value).detach().double() / accum
        self.speed.before_optimizer_step()
        # With fp16 the grad scaler unscales in the clip and must then step, and it skips overflowing
        # steps itself (lowering its scale): there the clip waits for the losses' verdict (`_update`).
        grad_norm = None
        if acc.scaler is None:
            # Without clipping the norm is still taken (an infinite bound scales by 1): a NaN gradient
            # behind a finite loss must skip the step too, or the LoRA turns NaN for good.
            grad_norm = self.speed.clip_grad_norm(args.max_grad_norm if args.max_grad_norm > 0 else math.inf, acc)
            sums["grad_norm"] = grad_norm
        checks = losses + ([grad_norm] if grad_norm is not None else [])
        outcome = StepOutcome(step + 1, checks, sums, acc.device, world_size=self.world_size,
                              reduce_sum=lambda t: acc.reduce(t, reduction="sum"), finished_epochs=finished_epochs)
        outcome.items = keys
        return outcome

    @property
    def _skips_on_device(self) -> bool:
        """Whether a step's update can go in on the device's own verdict, with no host wait (not with fp16's
        grad scaler, which decides on the host, nor with optimizers lacking a device-side skip)."""
        return self.speed.skips_on_device and self.accelerator.scaler is None

    def _update(self, outcome: StepOutcome) -> None:
        """Apply `outcome`'s step: skipped on the device where non-finite, else (fp16, AdamW8bit) after
        the host read the verdict. Then clear the gradients and move on to the next step."""
        model = self.accelerator.unwrap_model(self.adapter)
        if self._skips_on_device:
            self.speed.update(self.optimizer, model, found_inf=outcome.found_inf)
        else:
            finite, _ = outcome.read()
            if finite and self.args.max_grad_norm > 0 and self.accelerator.scaler is not None:
                outcome.extra["grad_norm"] = float(self.speed.clip_grad_norm(self.args.max_grad_norm,
                                                                             self.accelerator))
            self.speed.update(self.optimizer, model, apply=finite)
        self.progress.global_step += 1

    def _account(self, outcome: StepOutcome) -> dict[str, float]:
        """The host's side of a finished step: the learning-rate schedule, the skip record, the logs.

        The schedule moves only for steps that went in, and is read by the next step's update, so
        accounting one step late (`run`) gives every step the same learning rate as accounting at once."""
        finite, logs = outcome.read()
        logs.update(outcome.extra)
        step = outcome.step
        if finite:
            self.lr_scheduler.step()
            self.progress.nonfinite_in_a_row = 0
            self.progress.loss_history.append((step, logs["loss"]))
        else:
            logs.pop("grad_norm", None)
            self.progress.nonfinite_in_a_row += 1
            self.progress.skipped_steps.append(step)
            items = outcome.items
            self._say(f"step {step}: non-finite loss or gradient ({logs.get('loss')}); step skipped (items: "
                      f"{', '.join(items[:8])}{' …' if len(items) > 8 else ''})")
        logs["lr"] = self.lr_scheduler.get_last_lr()[0]
        logs["skipped"] = 0.0 if finite else 1.0
        return logs

    def _finish_step(self, outcome: StepOutcome, bar) -> None:
        """The host's end of a step: account and report it; stop a run that keeps diverging."""
        self._report(outcome, self._account(outcome), bar)
        if self.progress.nonfinite_in_a_row >= self.args.max_nonfinite_steps:
            bar.close()
            self.accelerator.end_training()
            keep = self.last_good_checkpoint or "none saved yet"
            raise TrainingDiverged(
                f"{self.progress.nonfinite_in_a_row} non-finite losses in a row (steps "
                f"{self.progress.skipped_steps[-self.progress.nonfinite_in_a_row:]}); stopping. Last good "
                f"checkpoint: {keep}. Lower --learning_rate or check the caches.")

    def _report(self, outcome: StepOutcome, logs: dict[str, float], bar) -> None:
        """A step's logs to the progress bar, `on_step_end` plugins, the trackers and metrics.jsonl."""
        step = outcome.step
        logs["step_time"], s_per_step = outcome.timing
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", s_step=f"{s_per_step:.2f}")
        if plugins.implemented("ltxv2_on_step_end"):
            self.speed.flush()  # a plugin may read the LoRA: an offloaded optimizer's update goes in first
            plugins.on_step_end(step=step, logs=logs)  # plugins may add entries before they are logged
        if self.args.log_with != "none":
            self.accelerator.log(logs, step=step)
        if self.accelerator.is_main_process:
            self.metrics.write(step, logs)

    def _report_before_stopping(self, outcome: StepOutcome, bar) -> None:
        """Log a step read late when an error stops the run, unless reading it fails too (then the
        error that stopped the run is the one to see)."""
        try:
            self._report(outcome, self._account(outcome), bar)
        except Exception as exc:  # e.g. the device itself failed
            logger.warning("step %d's logs are lost: %s", outcome.step, exc)

    def _say(self, message: str) -> None:
        """Print from the main process without tearing the progress bar."""
        if self.accelerator.is_main_process:
            from tqdm.auto import tqdm

            tqdm.write(message)

    # ------------------------------------------------------------------ saves and previews
    def save_checkpoint(self) -> Path | None:
        """LoRA files + training state of the current step, atomically; prunes per --save_last_n_steps."""
        acc, step = self.accelerator, self.progress.global_step
        path = None
        self.speed.flush()  # an offloaded optimizer's last update, into the LoRA about to be saved
        if acc.is_main_process:
            adapter = acc.unwrap_model(self.adapter)

            def fill(tmp: Path) -> None:
                save_lora_files(self.bundle, self.args, tmp, f"{self.args.output_name}-step{step:08d}", step)
                ckpt.save_training_state(tmp, adapter, self.optimizer, self.lr_scheduler, self.progress,
                                         extra={"args": args_to_dict(self.args), "items": self.data.item_keys(),
                                                "batching": self.data.batching(), "speed": self.speed.summary(),
                                                **({"memory_plan": self.plan.describe()} if self.plan else {})},
                                         master=self.speed.master)

            path = self._writing(lambda: self.checkpoints.write(step, fill), self.checkpoints.root)
            self.last_good_checkpoint = path
            # an epoch is batches_per_epoch / gradient_accumulation_steps optimizer steps
            window = self.args.save_last_n_steps or math.ceil(
                (getattr(self.args, "save_last_n_epochs", None) or 0) * self.data.batches_per_epoch()
                / self.args.gradient_accumulation_steps)
            if window:
                for old in self.checkpoints.prune(step - window, keep=path):
                    logger.info("removed old checkpoint %s (--save_last_n_steps / --save_last_n_epochs)", old)

            plugins.on_save(path=path, step=step)
            self._say(f"saved {path}")
        self._checkpoint_step = step  # on every rank: all of them must agree on later saves
        acc.wait_for_everyone()
        return path

    def _writing(self, write, where: Path):
        """Run `write()`; a LoRA that turned non-finite or a full/unwritable disk stops the run naming the
        path and the last good checkpoint (nothing broken is left behind: writes are atomic)."""
        import errno


        keep = self.last_good_checkpoint or "none saved yet"
        try:
            return write()
        except NonFiniteWeights as exc:
            raise TrainingFailed(f"step {self.progress.global_step}: {exc}. Last good checkpoint: {keep}. Lower "
                                 "--learning_rate or check the caches, then --resume from it.") from None
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                why = "the disk is full: free space there (old checkpoints, --save_last_n_steps) and --resume"
            elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                why = "no permission to write there: fix the folder's permissions or choose another --output_dir"
            else:
                why = f"{exc.strerror or exc}"
            raise TrainingFailed(f"cannot write {exc.filename or where}: {why}. Last good checkpoint: {keep}.") from exc
        except RuntimeError as exc:  # safetensors/torch report some I/O failures as RuntimeError
            if "iostream" not in str(exc) and "No space" not in str(exc):
                raise
            raise TrainingFailed(f"cannot write in {where}: {exc} (is the disk full? free space there and "
                                 f"--resume). Last good checkpoint: {keep}.") from exc

    def sample(self) -> list[Path]:
        """Render every preview prompt with the current LoRA (main process only)."""
        acc = self.accelerator
        written: list[Path] = []
        self.speed.flush()
        if acc.is_main_process:
            adapter = acc.unwrap_model(self.adapter)
            was_training = adapter.training
            adapter.eval()
            out_of_memory = False
            try:
                with acc.autocast():
                    written = render_previews(self.bundle, self.args, self.output_dir / "samples",
                                              self.progress.global_step, device=acc.device)
            except Exception as exc:
                if not _is_out_of_memory(exc):
                    raise
                out_of_memory = True  # handled below, once the failed preview's tensors are released
            finally:
                adapter.train(was_training)
            if out_of_memory:
                self._skip_previews_out_of_memory()
            self.previews_written.extend(written)
            for path in written:
                self._say(f"preview: {path}")
        acc.wait_for_everyone()
        return written

    def _skip_previews_out_of_memory(self) -> None:
        """A preview that ran out of GPU memory is skipped, not the run: free what it held and say what to do."""
        peak = ""
        if self.accelerator.device.type == "cuda":
            peak = f" ({torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30:.1f} GiB allocated at the peak)"
        _free_memory()
        message = (f"previews at step {self.progress.global_step} ran out of GPU memory{peak}; skipped, training "
                   f"goes on. Render smaller previews (--w/--h/--f on the lines of {self.args.sample_prompts}) "
                   "or fewer of them.")
        logger.warning(message)
        self._say(f"warning: {message}")

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        """Train; returns the final LoRA file. Raises `TrainingDiverged` on repeated non-finite steps,
        `TrainingFailed` when the product would be unusable or cannot be written."""
        try:
            return self._run()
        finally:
            self.lock.release()

    def _run(self) -> Path:
        from tqdm.auto import tqdm

        args = self.args
        self._setup_accelerator()
        self._setup_data()
        self._check_resume()
        self._setup_model()
        self._resume()
        stream = self._batch_stream()
        if self.plan is not None:  # before anything holds the model: a re-plan rebuilds it
            stream = self._confirm_plan(stream)
        acc = self.accelerator
        if args.log_with != "none":
            acc.init_trackers("ltxv2-lora", config={k: v for k, v in args_to_dict(args).items()
                                                   if isinstance(v, (int, float, str, bool))})
        plugins.on_train_start(args=args, model=acc.unwrap_model(self.adapter))
        if self._previews_enabled() and acc.is_main_process:
            self.bundle.prepare_prompts(args, acc.device)
        if args.sample_at_first and self.progress.global_step == 0:
            self.sample()
        self.adapter.train()
        if args.prefetch_batches:
            stream = Prefetcher(stream, depth=args.prefetch_batches, prepare=self._pinned)
        bar = tqdm(total=self.max_steps, initial=self.progress.global_step, disable=not acc.is_local_main_process,
                   desc="train", unit="step", dynamic_ncols=True)
        self._clock = _StepClock(self.progress.global_step)
        # A step's outcome is read once the next step is queued (`_finish_step` one step late), so the
        # host never waits for the GPU between steps. Steps whose end something must see right away (a
        # save, a preview, an `on_step_end` plugin, the last step) are finished at once.
        pending: StepOutcome | None = None
        try:
            while self.progress.global_step < self.max_steps:
                position = (self.progress.epoch, self.progress.batch_in_epoch)  # where this step's batches start
                out_of_memory = queued = False
                try:
                    outcome = self._queue_step(stream)
                    queued = True  # past here an update may be half applied: nothing is saved after a failure
                    if pending is not None:  # arrived while this step was queued: no wait
                        previous, pending = pending, None
                        self._finish_step(previous, bar)
                    self._update(outcome)
                    outcome.timing = self._clock.tick(outcome.step)
                except BaseException as exc:
                    if pending is not None:  # its update went in: keep its logs whatever stopped the run
                        self._report_before_stopping(pending, bar)
                    if not _is_out_of_memory(exc):
                        raise
                    out_of_memory = True  # handled below, once the failed step's tensors are released
                if out_of_memory:
                    bar.close()
                    if not queued:
                        self._save_after_out_of_memory(position)
                    acc.end_training()
                    raise TrainingOutOfMemory(self._out_of_memory_advice())
                step, epochs = outcome.step, outcome.finished_epochs
                save = _due(step, epochs, args.save_every_n_steps, args.save_every_n_epochs) and step < self.max_steps
                preview = _due(step, epochs, args.sample_every_n_steps, args.sample_every_n_epochs) \
                    and self._previews_enabled()
                at_once = (save or preview or step == self.max_steps or not self._skips_on_device
                           or plugins.implemented("ltxv2_on_step_end"))
                if not at_once:
                    pending = outcome
                    continue
                self._finish_step(outcome, bar)
                if save:
                    self.save_checkpoint()  # the last step's save happens in finish()
                if preview:
                    self.sample()
        finally:
            stream.close()  # the prefetch thread, or the plain generator
            if self._clock.after_first is not None:
                thaw_host_objects()  # a process that trains again (Python API, tests) collects them normally
        bar.close()
        final = self.finish()
        return final

    def _save_after_out_of_memory(self, position: tuple[int, int]) -> None:
        """The work done up to the last finished step, saved as a checkpoint when none holds it yet (single
        process: in a multi-process run the others may be waiting inside the failed step). The failed step's
        gradients are dropped and the data position goes back to its first batch, so `--resume` continues
        exactly as the run would have."""
        step = self.progress.global_step
        if self.world_size > 1 or step == 0 or self._checkpoint_step == step:
            return
        self.progress.epoch, self.progress.batch_in_epoch = position
        self._discard_step()
        try:
            self.save_checkpoint()
        except Exception as exc:  # the advice still names the last good checkpoint
            logger.warning("could not save the work up to step %d after running out of memory: %s", step, exc)

    def _out_of_memory_advice(self) -> str:
        import torch

        args, device = self.args, self.accelerator.device
        peak = (f" ({torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB allocated at the peak)"
                if device.type == "cuda" else "")
        levers = []
        plan = getattr(self, "plan", None)
        if plan is not None:
            levers.append(f"a smaller --memory_budget (the plan predicted {plan.peak_gib:.1f} GiB)")
        else:
            if args.blocks_without_recompute:
                levers.append(f"fewer --blocks_without_recompute (now {args.blocks_without_recompute})")
            levers.append("--memory_budget GiB (the planner picks the levers)")
            levers.append("more --blocks_to_swap" if args.blocks_to_swap else "--blocks_to_swap N")
            if not args.low_memory:
                levers.append("--low_memory")
        if not args.fp8_base and getattr(args, "speed", "fast") == "fast":
            levers.append("--fp8_base")
        levers.append("smaller buckets or --batch_size in the dataset config")
        keep = self.last_good_checkpoint or "none saved yet"
        return (f"the GPU ran out of memory in step {self.progress.global_step + 1}{peak}. Use less: "
                f"{', '.join(levers)}. Resume with --resume latest; last good checkpoint: {keep}.")

    def finish(self) -> Path:
        """Final checkpoint + LoRA in OUTPUT_DIR, the loss plot, hooks, optional Hub push."""
        acc, args = self.accelerator, self.args
        push_error = None
        if ((args.save_every_n_steps or args.save_every_n_epochs or getattr(args, "save_state_on_train_end", False))
                and self._checkpoint_step != self.progress.global_step):
            self.save_checkpoint()
        final = self.output_dir / f"{args.output_name}.safetensors"
        self.speed.flush()
        if acc.is_main_process:
            final = self._writing(lambda: save_lora_files(self.bundle, args, self.output_dir, args.output_name,
                                                           self.progress.global_step), self.output_dir)
            plot_loss_curve(self.progress.loss_history, self.output_dir / "loss.png",
                            skipped=self.progress.skipped_steps)
            acc.print(f"LoRA: {final}")
            if args.push_to_hub:

                try:
                    url = push_lora(args, self.output_dir, final, self.progress.global_step, previews=self.previews_written)
                    acc.print(f"pushed to {url}")
                except HubUploadError as exc:
                    push_error = str(exc)
        acc.wait_for_everyone()
        plugins.on_train_end(output_dir=self.output_dir)
        acc.end_training()
        if push_error:  # after every hook ran: the run itself finished and its files are complete
            raise TrainingFailed(push_error)
        return final


class _StepClock:
    """Wall time per step, between the moments the host has queued consecutive steps' updates (the
    queue is full, so the GPU paces them; a save or preview falls into the next step's time). The
    first step of a process compiles and warms up: the average leaves it out, and `gc.freeze()`
    follows it (`freeze_host_objects`)."""

    def __init__(self, done_at_start: int):
        self.done_at_start = done_at_start
        self.last = time.perf_counter()
        self.after_first: float | None = None  # when this process's first step ended

    def tick(self, step: int) -> tuple[float, float]:
        """(seconds since the previous step ended, saves included; the average s/step so far)."""
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        if step == self.done_at_start + 1:
            freeze_host_objects()  # compiled and allocated by now: keep full collections off them
            self.last = self.after_first = time.perf_counter()  # the one-off collection counts in no step
            return elapsed, elapsed
        return elapsed, (now - self.after_first) / (step - self.done_at_start - 1)


def _prepend(first, rest):
    """`first`, then what `rest` yields (a generator, so the loop can close it)."""
    yield first
    yield from rest


def _due(step: int, finished_epochs: list[int], every_n_steps: int | None, every_n_epochs: int | None) -> bool:
    """Whether a periodic action (save, sample) falls on this step or on an epoch it completed."""
    if every_n_steps and step % every_n_steps == 0:
        return True
    return bool(every_n_epochs) and any(epoch % every_n_epochs == 0 for epoch in finished_epochs)
