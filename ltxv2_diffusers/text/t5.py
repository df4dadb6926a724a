"""`t5` backend: the T5 encoder's last hidden state (for models whose caption width is T5's)."""

from __future__ import annotations

import torch

from .base import TextBackend


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
        from transformers import T5EncoderModel

        self._setup(text_encoder, tokenizer, max_length, audio_video, device, dtype)
        self.model = T5EncoderModel.from_pretrained(text_encoder, dtype=self.dtype).to(self.device).eval()

    def identity(self) -> str:
        return self._identity_prefix()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._tokenize(prompts)
        text = self.model(input_ids=ids, attention_mask=mask).last_hidden_state.to(self.dtype)
        text = text * mask.unsqueeze(-1).to(text.dtype)
        if self.audio_video:
            text = torch.cat([text, text], dim=-1)
        return text, mask.bool()
