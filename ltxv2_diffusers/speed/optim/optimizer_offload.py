"""AdamW whose fp32 master weights and moments live in pinned host memory, applied during the next forward.

On the fast path every LoRA parameter carries 12 bytes of optimizer-side state (fp32 master, two
AdamW moments): 2.4 GiB for the full-size AV model's rank-32 LoRA, idle on the GPU while
activations peak at the end of the forward. Here that state stays in host memory. `step()` only
records the update; the slice of each chunk of consecutive blocks is updated on the GPU right
before the chunk's next forward: copied in on a side stream while earlier blocks compute, stepped by
the same fused AdamW kernel torch's `AdamW(fused=True)` uses (elementwise, so slices give the whole
tensor's result bit for bit), its bf16 compute copy refreshed, and copied back while later blocks
compute. The host
link is otherwise idle during the forward (block swapping fetches in backward), so the update costs
the step almost nothing and frees the state's memory where it matters.

The model's LoRA tensors are stale between `step()` and the next forward: call `apply_pending()`
before reading them anywhere else (saving, sampling); that puts the whole update (2.6 GB over the
link at full size) in front of the next step instead of beside it. `state_dict()` flushes by itself.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..block_swap import check_host_memory
from .master_weights import MasterWeights, flat_cat


def host_copy(t: torch.Tensor, pin: bool) -> torch.Tensor:
    """An fp32 copy of `t` in host memory of its own, page-locked when `pin` (for asynchronous copies)."""
    t = t.detach().to("cpu", torch.float32)
    return t.pin_memory() if pin else t.clone()


def block_runs(blocks: list[nn.Module], params: list[nn.Parameter]) -> list[tuple[int | None, int, int]]:
    """Contiguous runs of `params` (as indices) by the block that owns them: (block index or None, start, end)."""
    owner = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
    runs: list[tuple[int | None, int, int]] = []
    for k, p in enumerate(params):
        b = owner.get(id(p))
        if runs and runs[-1][0] == b:
            runs[-1] = (b, runs[-1][1], k + 1)
        else:
            runs.append((b, k, k + 1))
    return runs


class HostMasterWeights(MasterWeights):
    """`MasterWeights` with the flat fp32 master in (pinned) host memory and the gradients kept on the
    device per run of parameters (`block_runs`), so that each run's gradient is freed as soon as the
    optimizer applied it."""

    def __init__(self, params: Iterable[nn.Parameter], blocks: list[nn.Module],
                 compute_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, compute_dtype)
        self.blocks = blocks
        self.device = self.flat_model.device
        # the master here, the two AdamW moments with the optimizer
        check_host_memory(3 * self.flat.numel() * 4, "--offload_optimizer", what="optimizer state",
                          advice="drop the flag, train fewer LoRA parameters or free host memory")
        self.flat = nn.Parameter(host_copy(self.flat, pin=self.device.type == "cuda"))
        self.master_params = self._views(self.flat.detach())
        self.runs = block_runs(blocks, self.model_params)
        offsets = [0]
        for n in self.sizes:
            offsets.append(offsets[-1] + n)
        self.ranges = [(offsets[a], offsets[b]) for _, a, b in self.runs]  # element range of each run
        self.grads: list[torch.Tensor | None] = [None] * len(self.runs)
        self.flush_updates = lambda: None  # set by the optimizer that applies updates lazily

    def state_dict(self) -> list[torch.Tensor]:
        self.flush_updates()
        return super().state_dict()

    @torch.no_grad()
    def grads_to_master(self, accumulate: bool = False) -> None:
        """Move the model gradients into per-run fp32 device tensors (summing when accumulating)."""
        if all(p.grad is None for p in self.model_params):
            return
        for r, (_, a, b) in enumerate(self.runs):
            params = self.model_params[a:b]
            flat = flat_cat([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])
            if accumulate and self.grads[r] is not None:
                self.grads[r].add_(flat)
            else:
                self.grads[r] = flat.float()
        for p in self.model_params:
            p.grad = None

    def take_grads(self) -> list[torch.Tensor | None]:
        """The accumulated gradients, handed over to the optimizer (none are left here)."""
        grads, self.grads = self.grads, [None] * len(self.runs)
        return grads

    def zero_grad(self) -> None:
        self.grads = [None] * len(self.runs)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Scale the accumulated gradients to a total L2 norm of at most `max_norm`, like
        `torch.nn.utils.clip_grad_norm_` over the flat fp32 gradient; returns the norm before clipping."""
        grads = [g for g in self.grads if g is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        torch._foreach_mul_(grads, coef)
        return norm


class OffloadedAdamW(torch.optim.Optimizer):
    """AdamW over a `HostMasterWeights`, its moments in host memory too; see the module docstring.

    Updates go in chunks of `blocks_per_chunk` consecutive blocks: one copy in and out per state
    tensor and one fused kernel launch per chunk, applied when the chunk's first block starts its
    forward, the next `prefetch` chunks copied in meanwhile. (Per block, the host work in the
    forward, which runs barely ahead of the GPU, cost about 1 % of the step.)

    The state has torch `AdamW`'s layout (`step`, `exp_avg`, `exp_avg_sq` for the one flat master),
    so checkpoints move between this optimizer and `AdamW` over a device `MasterWeights`. Like fused
    `AdamW`, it skips a step on the device where its `found_inf` attribute (a 0-d float tensor) is 1:
    weights, moments and the step count stay as they were, and the host never waits for the verdict.
    """

    def __init__(self, master: HostMasterWeights, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 blocks_per_chunk: int = 4, prefetch: int = 1):
        super().__init__([master.flat], dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self.master = master
        master.flush_updates = self.flush
        self.device = master.device
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.prefetch = prefetch
        # chunk: consecutive runs (contiguous in the flat master); runs outside the blocks are chunks of
        # their own, applied at once by step() since they run before any block
        self.chunks: list[list[int]] = []
        self.first_block: list[int | None] = []
        for r, (b, _, _) in enumerate(master.runs):
            prev = self.first_block[-1] if self.chunks else None
            if b is not None and prev is not None and b - prev < blocks_per_chunk and b >= prev:
                self.chunks[-1].append(r)
            else:
                self.chunks.append([r])
                self.first_block.append(b)
        self.order = [c for c, b in enumerate(self.first_block) if b is not None]
        self.pending: dict[int, tuple[list[torch.Tensor], dict]] = {}  # chunk -> (gradients, its step's hyperparameters)
        self.fetched: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self._step: torch.Tensor | None = None  # AdamW's step count, on the device once stepping
        starts: dict[int, list[int]] = {}
        for c in self.order:
            starts.setdefault(self.first_block[c], []).append(c)
        self._handles = [master.blocks[b].register_forward_pre_hook(self._make_hook(cs)) for b, cs in starts.items()]

    def _host_state(self) -> dict:
        flat = self.master.flat
        state = self.state[flat]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros(flat.shape, dtype=torch.float32, pin_memory=self.cuda)
            state["exp_avg_sq"] = torch.zeros(flat.shape, dtype=torch.float32, pin_memory=self.cuda)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        """Record this step's update; it is applied chunk by chunk in the next forward (or by `flush`)."""
        loss = closure() if closure is not None else None
        grads = self.master.take_grads()
        if all(g is None for g in grads):
            return loss
        self.apply_pending()  # an update still pending from the previous step comes first (stream-ordered)
        found_inf = getattr(self, "found_inf", None)  # set like GradScaler sets fused AdamW's
        if self._step is None:
            self._step = torch.full((), float(self._host_state()["step"]), dtype=torch.float32, device=self.device)
        # counted on the device, so a step skipped there (found_inf = 1) does not count, with no host wait
        self._step.add_(1.0 if found_inf is None else 1.0 - found_inf)
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        hyper = dict(lr=float(group["lr"]), beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
                     eps=group["eps"], step=self._step.clone(), found_inf=found_inf)
        for c, runs in enumerate(self.chunks):  # every run has a gradient (zeros where nothing flowed)
            self.pending[c] = ([grads[r] for r in runs], hyper)
        for c in [c for c, b in enumerate(self.first_block) if b is None]:
            self._apply(c)  # parameters outside the blocks run before any block hook fires
        for c in self.order[:self.prefetch]:
            self._fetch(c)
        return loss

    def _make_hook(self, chunks: list[int]):
        def hook(module, args):
            if not self.pending:
                return None
            for c in chunks:
                if c in self.pending:
                    self._apply(c)
            later = [c for c in self.order if c in self.pending and c not in self.fetched]
            for c in later[:self.prefetch]:
                self._fetch(c)
            return None

        return hook

    def _span(self, c: int) -> tuple[int, int]:
        runs = self.chunks[c]
        return self.master.ranges[runs[0]][0], self.master.ranges[runs[-1]][1]

    def _host_slices(self, c: int) -> list[torch.Tensor]:
        lo, hi = self._span(c)
        state = self._host_state()
        return [self.master.flat.detach()[lo:hi], state["exp_avg"][lo:hi], state["exp_avg_sq"][lo:hi]]

    def _fetch(self, c: int) -> None:
        """Start copying chunk c's master and moments to the device (side stream on CUDA)."""
        if c in self.fetched or c not in self.pending:
            return
        host = self._host_slices(c)
        if not self.cuda:
            self.fetched[c] = ([t.clone() for t in host], None)
            return
        current = torch.cuda.current_stream(self.device)
        device = [torch.empty_like(t, device=self.device) for t in host]  # from the compute stream's pool
        self.stream.wait_stream(current)  # the memory may be what queued compute work still reads
        with torch.cuda.stream(self.stream):
            for d, h in zip(device, host):
                d.copy_(h, non_blocking=True)
        event = torch.cuda.Event()
        event.record(self.stream)
        self.fetched[c] = (device, event)

    def _apply(self, c: int) -> None:
        """Chunk c's AdamW update on the device (one fused launch over its runs), its compute-dtype
        copy refreshed, and the state copied back."""
        self._fetch(c)
        grads, h = self.pending.pop(c)
        state, event = self.fetched.pop(c)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        lo, _ = self._span(c)
        views = [[t[a - lo:b - lo] for a, b in (self.master.ranges[r] for r in self.chunks[c])] for t in state]
        torch._fused_adamw_(views[0], grads, views[1], views[2], [], [h["step"]] * len(grads), lr=h["lr"],
                            beta1=h["beta1"], beta2=h["beta2"], weight_decay=h["weight_decay"], eps=h["eps"],
                            amsgrad=False, maximize=False, found_inf=h["found_inf"])
        master = state[0]
        self.master.flat_model[lo:lo + master.numel()].copy_(master)
        host = self._host_slices(c)
        if not self.cuda:
            for d, t in zip(host, state):
                d.copy_(t)
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            for d, t in zip(host, state):
                d.copy_(t, non_blocking=True)
        for t in state:
            t.record_stream(self.stream)  # not reused before the copy back has read them

    def apply_pending(self) -> None:
        """Queue every pending update now: the model's LoRA tensors are current for whatever the device
        runs next (the host copies of the state only once the side stream is done)."""
        for c in list(self.pending):
            self._apply(c)

    def flush(self) -> None:
        """Apply every pending update and wait until the host copies of the state are current."""
        self.apply_pending()
        if self.cuda:
            self.stream.synchronize()
        if self._step is not None:  # the device's count (skipped steps left out) becomes the host's
            self._host_state()["step"] = self._step.to("cpu", copy=True)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop gradients accumulated since the last `step()` (a skipped step's)."""
        self.master.zero_grad()

    def state_dict(self):
        self.flush()
        return super().state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.pending.clear()
        self.fetched.clear()
        self._step = None
        super().load_state_dict(state_dict)
        state = self.state[self.master.flat]
        if state:  # torch moved it next to the (host) master; pin it and keep `step` a host scalar
            state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)  # its own, stepped in place
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = host_copy(state[key], pin=self.cuda)

    def remove(self) -> None:
        """Apply what is pending and remove the forward hooks."""
        self.flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
