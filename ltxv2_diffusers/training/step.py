"""One training step: draw sigmas (plugin hook) and noise, run the model adapter, compute the losses.

`TrainStep(adapter, args)(batch, generator) -> (loss, logs)` is the whole per-step computation and
nothing else (no optimizer, no accelerate), so the trainer, the benchmark and tests call the same
code. Randomness: pass one `torch.Generator` for the whole batch, or a list with one generator per
item; with per-item generators an item's sigma and noise do not depend on which process or
micro-batch it lands in, which is what makes multi-process runs equal single-process ones.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from ltxv2_diffusers import plugins
from ltxv2_diffusers.conditioning import ConditioningOptions, apply_conditioning
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.training.losses import compute_losses

Generators = torch.Generator | Sequence[torch.Generator] | None


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU-drawn randomness to `device`. To a GPU through pinned memory without blocking: a copy from
    pageable memory waits for the GPU to finish all queued work, so the next step could not be queued
    while this one still runs."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def video_token_count(latents: torch.Tensor) -> int:
    """Packed video tokens of a `[B,C,F,H,W]` latent (patch size 1)."""
    return int(latents.shape[2] * latents.shape[3] * latents.shape[4])


def audio_token_count(audio_latents: torch.Tensor) -> int:
    """Packed audio tokens of a `[B,C,Fa,M]` latent (one token per latent frame)."""
    return int(audio_latents.shape[2])


def _device_randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal fp32 noise drawn on `device` by a generator seeded from one draw of the host
    `generator` (the device's default generator without one)."""
    if generator is None:
        return torch.randn(shape, dtype=torch.float32, device=device)
    seed = int(torch.randint(0, 2**62, (), generator=generator))
    return torch.randn(shape, dtype=torch.float32, device=device,
                       generator=torch.Generator(device=device).manual_seed(seed))


class TrainStep:
    """Callable computing the loss of one batch. `adapter` is an LTX-2 model adapter (models/adapter.py)."""

    def __init__(self, adapter: torch.nn.Module, args: Any):
        self.adapter = adapter
        self.args = args
        self.mode: LtxMode = args.mode
        self.draw_noise_on_device: bool | None = None  # None: on CUDA devices (see `noise_on_device`)
        self.conditioning = ConditioningOptions.from_args(args)

    # -- randomness -------------------------------------------------------------------------
    def _per_item(self, generator: Generators, batch_size: int) -> list[torch.Generator | None] | None:
        if generator is None or isinstance(generator, torch.Generator):
            return None
        generators = list(generator)
        if len(generators) != batch_size:
            raise ValueError(f"got {len(generators)} generators for a batch of {batch_size}")
        return generators

    def _sigmas(self, modality: str, batch_size: int, num_tokens: int, generator: Generators,
                device: torch.device) -> torch.Tensor:
        def draw(n: int, gen: torch.Generator | None) -> torch.Tensor:
            sigmas = plugins.sample_sigmas(batch_size=n, num_tokens=num_tokens, modality=modality,
                                           args=self.args, generator=gen)
            if sigmas is None:
                raise RuntimeError("no plugin answered ltxv2_sample_sigmas (built-in plugins blocked?)")
            return torch.as_tensor(sigmas, dtype=torch.float32).reshape(n, *torch.as_tensor(sigmas).shape[1:])

        gens = self._per_item(generator, batch_size)
        if gens is None:
            sigmas = draw(batch_size, generator)
        else:
            sigmas = torch.cat([draw(1, g) for g in gens], dim=0)
        return _to_device(sigmas, device)

    def _noise(self, like: torch.Tensor, generator: Generators) -> torch.Tensor:
        gens = self._per_item(generator, like.shape[0])
        on_device = self.noise_on_device(like.device)

        def randn(shape, gen):
            if on_device:
                return _device_randn(shape, gen, like.device)
            return torch.randn(shape, generator=gen, dtype=torch.float32)

        noise = randn(like.shape, generator) if gens is None else torch.stack([randn(like.shape[1:], g) for g in gens])
        return noise if on_device else _to_device(noise, like.device)

    def noise_on_device(self, device: torch.device) -> bool:
        """Whether noise is drawn by the latents' device itself (CUDA; or where `draw_noise_on_device` says).

        A CPU draw of a full-size video latent and its copy cost the GPU ~10 ms of idling at each step's
        start; on the device it is one kernel. The host generator still decides it (one seed drawn from
        it seeds a device generator), so per-item determinism holds the same way."""
        if self.draw_noise_on_device is not None:
            return self.draw_noise_on_device
        return torch.device(device).type == "cuda"

    def draw(self, batch: Mapping[str, Any], generator: Generators = None):
        """Sigmas and noise (unpacked, shaped like the latents) of the trained modalities.

        Sigmas are drawn before noise for each modality, video first, so the stream of draws is fixed. On
        CUDA the noise itself is drawn on the device from a seed the host generator draws (`noise_on_device`),
        so the same seed gives other noise on a GPU than on a CPU, and the same noise on every GPU.
        """
        sigmas: dict[str, torch.Tensor] = {}
        noise: dict[str, torch.Tensor] = {}
        if self.mode.has_video:
            latents = batch["latents"]
            sigmas["video"] = self._sigmas("video", latents.shape[0], video_token_count(latents), generator,
                                           latents.device)
        if self.mode.has_audio:
            audio = batch["audio_latents"]
            if self.mode.has_video and not self.args.independent_audio_sigmas:
                sigmas["audio"] = sigmas["video"].clone()
            else:
                sigmas["audio"] = self._sigmas("audio", audio.shape[0], audio_token_count(audio), generator,
                                               audio.device)
        if self.mode.has_video:
            noise["video"] = self._noise(batch["latents"], generator)
        if self.mode.has_audio:
            noise["audio"] = self._noise(batch["audio_latents"], generator)
        return sigmas, noise

    # -- the step ---------------------------------------------------------------------------
    def __call__(self, batch: Mapping[str, Any], generator: Generators = None):
        """Loss (a scalar with grad) and logs (detached scalars: total, per term, mean sigmas)."""
        transformed = plugins.transform_batch(batch=batch, args=self.args)
        if transformed is not None:
            batch = transformed
        sigmas, noise = self.draw(batch, generator)
        drawn = sigmas
        extra = plugins.conditioning_masks(batch=batch, args=self.args, generator=generator)
        if self.conditioning.active or extra or "reference_latents" in batch or "reference_audio_latents" in batch:
            batch, sigmas = apply_conditioning(batch, sigmas, self.conditioning, generator, extra)
        outputs = self.adapter(batch, sigmas=sigmas, noise=noise)
        loss, terms = compute_losses(outputs, batch, self.args)
        logs: dict[str, torch.Tensor] = {"loss": loss.detach(), **terms}
        for modality, value in drawn.items():
            logs[f"sigma/{modality}"] = value.detach().float().mean()
        return loss, logs
