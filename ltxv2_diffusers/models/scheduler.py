"""LTX-2's flow-matching scheduler: the inference schedule `LTX2Pipeline` uses, plus training-side
sigma sampling, noising and the velocity target.

Flow matching as LTX-2 trains it: `x_t = sigma * noise + (1 - sigma) * x0`, target `v = noise - x0`.
"""

from __future__ import annotations

from typing import Literal

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.configuration_utils import register_to_config

from ltxv2_diffusers import diffusers_component
from ltxv2_diffusers.timesteps import SIGMA_SAMPLING_CHOICES as SAMPLING_CHOICES
from ltxv2_diffusers.timesteps import TimestepFormat, parse_timestep_format, timesteps_to_sigmas

# Standard-normal quantiles the official trainer stretches its logit-normal between (0.5 % and 99.9 %).
_NORMAL_Q005 = -2.5758
_NORMAL_Q999 = 3.0902


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """`sigma * noise + (1 - sigma) * x0`; `sigmas` is `[B]` or `[B, N]` (per token of packed `[B, N, C]`)."""
    s = _broadcast_sigmas(sigmas, x0)
    return s * noise + (1 - s) * x0


def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target `noise - x0`."""
    return noise - x0


def _broadcast_sigmas(sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigmas, device=x.device)
    if s.dtype != x.dtype:
        s = s.to(x.dtype)
    if s.ndim == 0:
        return s
    if s.ndim > x.ndim or tuple(s.shape) != tuple(x.shape[: s.ndim]):
        raise ValueError(
            f"sigmas of shape {tuple(s.shape)} do not match latents of shape {tuple(x.shape)}: "
            "expected [B] or [B, N] for packed [B, N, C] latents"
        )
    return s.reshape(*s.shape, *([1] * (x.ndim - s.ndim)))


def token_shift(num_tokens: int, base_shift: float, max_shift: float, base_seq_len: int, max_seq_len: int) -> float:
    """Logit-normal mean for `num_tokens`: linear through (base_seq_len, base_shift), (max_seq_len, max_shift).

    Not clamped: the official trainer extrapolates the same line beyond both ends.
    """
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (num_tokens - base_seq_len)


@diffusers_component
class LTXV2FlowMatchScheduler(FlowMatchEulerDiscreteScheduler):
    """`FlowMatchEulerDiscreteScheduler` with LTX-2's inference defaults (dynamic shift 0.95 → 2.05 over
    1024 → 4096 tokens, terminal sigma 0.1), accepted as `scheduler` by the stock `LTX2Pipeline`, plus the
    training side: `sample_sigmas`, `sample_training_sigmas`, `add_noise`, `velocity`, `sigmas_from_timesteps`.

    Training sampling (`training_sampling`):
    - `"shifted_logit_normal"` (the official LTX-2 trainer's): `sigmoid(N(mu, std))` with `mu` growing
      linearly with the token count (`base_shift` at `base_image_seq_len` → `max_shift` at
      `max_image_seq_len`), stretched so the normal's 0.5 % .. 99.9 % quantiles map to [0, 1], values
      below `training_eps` reflected about it, and a `training_uniform_prob` share of draws replaced by
      uniform draws in [`training_eps`, 1).
    - `"uniform"`: uniform in [0, 1).
    `independent_audio_sigma` draws the audio sigma separately (else audio shares the video sigma).
    """

    _compatibles = [FlowMatchEulerDiscreteScheduler.__name__]

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        shift: float = 1.0,
        use_dynamic_shifting: bool = True,
        base_shift: float | None = 0.95,
        max_shift: float | None = 2.05,
        base_image_seq_len: int = 1024,
        max_image_seq_len: int = 4096,
        invert_sigmas: bool = False,
        shift_terminal: float | None = 0.1,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_beta_sigmas: bool = False,
        time_shift_type: Literal["exponential", "linear"] = "exponential",
        stochastic_sampling: bool = False,
        training_sampling: str = "shifted_logit_normal",
        training_std: float = 1.0,
        training_eps: float = 1e-3,
        training_uniform_prob: float = 0.1,
        independent_audio_sigma: bool = False,
    ):
        if training_sampling not in SAMPLING_CHOICES:
            raise ValueError(
                f"training_sampling {training_sampling!r} is unknown; choose one of {', '.join(SAMPLING_CHOICES)}"
            )
        if not 0.0 <= training_uniform_prob <= 1.0:
            raise ValueError(f"training_uniform_prob must be in [0, 1], got {training_uniform_prob}")
        super().__init__(
            num_train_timesteps=num_train_timesteps,
            shift=shift,
            use_dynamic_shifting=use_dynamic_shifting,
            base_shift=base_shift,
            max_shift=max_shift,
            base_image_seq_len=base_image_seq_len,
            max_image_seq_len=max_image_seq_len,
            invert_sigmas=invert_sigmas,
            shift_terminal=shift_terminal,
            use_karras_sigmas=use_karras_sigmas,
            use_exponential_sigmas=use_exponential_sigmas,
            use_beta_sigmas=use_beta_sigmas,
            time_shift_type=time_shift_type,
            stochastic_sampling=stochastic_sampling,
        )

    # ---- inference helpers -------------------------------------------------------------------------

    def mu_for_tokens(self, num_tokens: int) -> float:
        """The dynamic-shift `mu` `LTX2Pipeline` passes to `set_timesteps` for `num_tokens` video tokens."""
        c = self.config
        return token_shift(num_tokens, c.base_shift, c.max_shift, c.base_image_seq_len, c.max_image_seq_len)

    # ---- training side -----------------------------------------------------------------------------

    def sample_sigmas(
        self,
        batch_size: int,
        num_tokens: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Draw `[batch_size]` float32 training sigmas in [0, 1] for sequences of `num_tokens` tokens."""
        if batch_size < 1 or num_tokens < 1:
            raise ValueError(f"batch_size and num_tokens must be >= 1, got {batch_size}, {num_tokens}")
        device = _generator_device(generator, device)
        c = self.config
        if c.training_sampling == "uniform":
            return torch.rand(batch_size, generator=generator, device=device)
        mu = token_shift(num_tokens, c.base_shift, c.max_shift, c.base_image_seq_len, c.max_image_seq_len)
        std, eps = c.training_std, c.training_eps
        normal = torch.randn(batch_size, generator=generator, device=device) * std + mu
        lo = torch.sigmoid(torch.tensor(mu + _NORMAL_Q005 * std, device=device))
        hi = torch.sigmoid(torch.tensor(mu + _NORMAL_Q999 * std, device=device))
        stretched = (torch.sigmoid(normal) - lo) / (hi - lo)
        # Reflecting about eps (instead of clamping) keeps density off sigma = 0, where nothing is learned.
        stretched = torch.where(stretched >= eps, stretched, 2 * eps - stretched).clamp(0.0, 1.0)
        uniform = (1 - eps) * torch.rand(batch_size, generator=generator, device=device) + eps
        pick = torch.rand(batch_size, generator=generator, device=device)
        return torch.where(pick > c.training_uniform_prob, stretched, uniform)

    def sample_training_sigmas(
        self,
        batch_size: int,
        num_video_tokens: int | None = None,
        num_audio_tokens: int | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Sigmas for the adapter, `{"video": [B], "audio": [B]}` (only the modalities given a token count).

        The video token count sets the shift; audio reuses the video sigma unless
        `independent_audio_sigma` (then it gets its own draw, shifted by the audio token count).
        Audio-only (no video tokens) draws from the audio token count.
        """
        out: dict[str, torch.Tensor] = {}
        if num_video_tokens:
            out["video"] = self.sample_sigmas(batch_size, num_video_tokens, generator, device)
        if num_audio_tokens:
            if "video" in out and not self.config.independent_audio_sigma:
                out["audio"] = out["video"]
            else:
                out["audio"] = self.sample_sigmas(batch_size, num_audio_tokens, generator, device)
        if not out:
            raise ValueError("sample_training_sigmas needs num_video_tokens and/or num_audio_tokens")
        return out

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        """`sigma * noise + (1 - sigma) * x0` (sigmas `[B]` or per token `[B, N]`)."""
        return add_noise(x0, noise, sigmas)

    @staticmethod
    def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The training target `noise - x0`."""
        return velocity(x0, noise)

    @staticmethod
    def sigmas_from_timesteps(timesteps: torch.Tensor | float, timestep_format: TimestepFormat | str) -> torch.Tensor:
        """User timesteps in `--ltxv2_timestep_format` → sigmas in [0, 1] (out of range is an error)."""
        return timesteps_to_sigmas(torch.as_tensor(timesteps), parse_timestep_format(timestep_format))


def _generator_device(generator: torch.Generator | None, device) -> torch.device:
    if generator is not None:
        gen_device = generator.device
        if device is not None and torch.device(device).type != gen_device.type:
            raise ValueError(f"generator is on {gen_device} but device {device} was asked for")
        return gen_device
    return torch.device(device) if device is not None else torch.device("cpu")
