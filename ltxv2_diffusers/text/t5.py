"""`t5` backend: the T5 encoder's last hidden state (for models whose caption width is T5's)."""

from __future__ import annotations

import gc

import torch

from .base import TextBackend, folder_identity, resolve_dtype


class T5TextBackend(TextBackend):
    """T5 encoder (Hub id or local folder); `connectors` and `audio_video` are accepted and unused
    except that an audio+video cache repeats the context for the audio half, as the old trainer did."""

    name = "t5"

    def __init__(
        self,
        text_encoder: str,
        tokenizer: str | None = None,
        max_length: int = 128,
        connectors=None,
        audio_video: bool = False,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ):
        from transformers import AutoTokenizer, T5EncoderModel

        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.max_length = int(max_length)
        self.audio_video = bool(audio_video)
        self._encoder_name = text_encoder
        self._tokenizer_name = tokenizer or text_encoder
        self.tokenizer = AutoTokenizer.from_pretrained(self._tokenizer_name)
        self.model = T5EncoderModel.from_pretrained(text_encoder, dtype=self.dtype).to(self.device).eval()

    def identity(self) -> str:
        return (
            f"t5|{folder_identity(self._encoder_name)}|tok={folder_identity(self._tokenizer_name)}|"
            f"max_length={self.max_length}|av={self.audio_video}|dtype={self.dtype}"
        )

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            [p.strip() for p in prompts],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids = tokens.input_ids.to(self.device)
        mask = tokens.attention_mask.to(self.device)
        text = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.to(self.dtype)
        text = text * mask.unsqueeze(-1).to(text.dtype)
        if self.audio_video:
            text = torch.cat([text, text], dim=-1)
        return text, mask.bool()

    def free(self) -> None:
        if hasattr(self, "model"):
            del self.model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
