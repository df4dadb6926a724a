"""`gemma` backend: Gemma-3 hidden states (all layers) through the LTX-2 text connectors.

The cached output is what the transformer reads: the connectors' video context, or for audio+video
`[video_ctx, audio_ctx]` concatenated on the last dim. Raw Gemma states (≈385 MB/prompt at full
size) are never stored.
"""

from __future__ import annotations

import torch

from .base import TextBackend


class GemmaTextBackend(TextBackend):
    """Gemma-3 (Hub id or local folder) + `LTX2TextConnectors` (module or checkpoint path)."""

    name = "gemma"
    model_attributes = ("model", "connectors")

    def __init__(
        self,
        text_encoder: str,
        tokenizer: str | None = None,
        max_length: int = 1024,
        connectors=None,
        audio_video: bool = False,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
    ):
        from transformers import AutoModel

        if connectors is None:
            raise ValueError(
                "the gemma text backend needs the LTX-2 text connectors: pass the model checkpoint with "
                "--ltxv2_model (or --vae when it is the same single file)."
            )
        self._setup(text_encoder, tokenizer, max_length, audio_video, device, dtype)
        # The connectors were trained on left-padded Gemma prompts (see diffusers' LTX2Pipeline).
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(text_encoder, dtype=self.dtype).to(self.device).eval()
        if isinstance(connectors, (str,)):
            connectors = _load_connectors(connectors)
        self.connectors = connectors.to(self.device, self.dtype).eval()
        registers = self.connectors.config.video_connector_num_learnable_registers
        if registers and self.max_length % registers:
            raise ValueError(
                f"--max_length {self.max_length} must be a multiple of the connectors' {registers} learnable "
                "registers (the official models use 1024)."
            )
        self._check_widths()

    def _check_widths(self) -> None:
        cfg = self.model.config
        text_cfg = getattr(cfg, "text_config", cfg)
        layers = text_cfg.num_hidden_layers + 1
        width = text_cfg.hidden_size
        c = self.connectors.config
        if (width, layers) != (c.caption_channels, c.text_proj_in_factor):
            raise ValueError(
                f"text encoder {self._encoder_name!r} gives {layers} hidden states of width {width}, but the "
                f"connectors expect {c.text_proj_in_factor} of width {c.caption_channels}: use the Gemma-3 "
                "model the LTX-2 checkpoint was trained with."
            )

    def identity(self) -> str:
        c = self.connectors
        n = sum(p.numel() for p in c.parameters())
        # A fingerprint of the connector weights: cheap (a few sums) and changes with any checkpoint.
        with torch.no_grad():
            digest = sum(float(p.double().sum()) * (i + 1) for i, p in enumerate(c.parameters()))
        return f"{self._identity_prefix()}|connectors={n}:{digest:.6e}"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._tokenize(prompts)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        states = torch.stack(out.hidden_states, dim=-1).flatten(2, 3).to(self.dtype)
        video, audio, out_mask = self.connectors(states, mask, padding_side="left")
        text = torch.cat([video, audio], dim=-1) if self.audio_video else video
        return text, out_mask.bool()


def _load_connectors(path: str):
    from ltxv2_diffusers.models.loading import load_required_components

    return load_required_components(path, ["connectors"])["connectors"]
