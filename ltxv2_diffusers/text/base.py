"""The interface shared by text backends and their lookup through the plugin registry."""

from __future__ import annotations

import abc
from typing import Callable

import torch


class TextBackend(abc.ABC):
    """Encodes prompts into the text context the LTX-2 transformer reads.

    `encode(prompts)` returns `(text [B,L,D] float, mask [B,L] bool)`; `identity()` is a string that
    changes exactly when the cached output would (used in cache fingerprints); `free()` drops the
    models so the memory can go to the next job.
    """

    name: str = ""
    #: attributes holding models, dropped by `free()`
    model_attributes: tuple[str, ...] = ("model",)

    def _setup(self, text_encoder: str, tokenizer: str | None, max_length: int, audio_video: bool,
               device: str | torch.device, dtype: str | torch.dtype | None, load_tokenizer: bool = True) -> None:
        """Settings every backend shares; the default dtype is bf16 on CUDA and fp32 elsewhere.
        `load_tokenizer=False` leaves `self.tokenizer` to the backend (e.g. one stored in the model file)."""
        from transformers import AutoTokenizer

        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_length = int(max_length)
        self.audio_video = bool(audio_video)
        self._encoder_name = text_encoder
        self._tokenizer_name = tokenizer or text_encoder
        if load_tokenizer:
            self.tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)

    def _identity_prefix(self) -> str:
        return (
            f"{self.name}|{folder_identity(self._encoder_name)}|tok={folder_identity(self._tokenizer_name)}|"
            f"max_length={self.max_length}|av={self.audio_video}|dtype={self.dtype}"
        )

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, padded to `max_length`, on the backend's device."""
        tokens = self.tokenizer(
            [p.strip() for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)

    @abc.abstractmethod
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    @abc.abstractmethod
    def identity(self) -> str: ...

    def free(self) -> None:
        import gc

        for name in self.model_attributes:
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        if torch.cuda.is_available():
            from ltxv2_diffusers.speed.pinned import release_cached_pinned_memory

            torch.cuda.empty_cache()
            release_cached_pinned_memory()  # a streamed encoder's layers: the training's host memory


def _registry() -> dict[str, Callable[..., TextBackend]]:
    from ltxv2_diffusers.plugins import text_encoder_backends

    return dict(text_encoder_backends())


def text_backend_names() -> list[str]:
    return sorted(_registry())


def get_text_backend(name: str) -> Callable[..., TextBackend]:
    """The factory registered for `--text_encoder_backend name` (plugins may add more)."""
    registry = _registry()
    if name not in registry:
        raise ValueError(
            f"--text_encoder_backend {name!r} is not registered; choose one of {', '.join(sorted(registry))} "
            "or install the plugin that provides it."
        )
    return registry[name]


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    """`bf16`/`bfloat16`/`torch.bfloat16`-style names to a torch dtype."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
        "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
        "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    }
    key = str(dtype).lower().removeprefix("torch.")
    if key not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of bf16, fp16, fp32")
    return names[key]


def folder_identity(path: str) -> str:
    """A stable identity for a Hub id or local folder: the name plus, locally, file sizes and mtimes.

    Local folders change when re-saved, so their identity must follow their content, not the path alone.
    """
    import os

    if not os.path.isdir(path):
        return path
    parts = [os.path.basename(os.path.normpath(path))]
    for root, _, files in sorted(os.walk(path)):
        for f in sorted(files):
            if f.endswith((".json", ".safetensors", ".bin", ".model")):
                st = os.stat(os.path.join(root, f))
                parts.append(f"{os.path.relpath(os.path.join(root, f), path)}:{st.st_size}:{int(st.st_mtime)}")
    return "|".join(parts)
