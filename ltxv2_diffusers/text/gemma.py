"""`gemma` backend: Gemma hidden states (all layers) through the LTX-2 text connectors.

Gemma 3 (LTX-2.0 / 2.3) and Gemma 4 (LTX-2.5) are told apart by the model's config; both are tokenized
the official way (prompt stripped, `<bos>` first, which Gemma 4's tokenizer does not add itself, left
padding to `max_length`).

The cached output is what the transformer reads: the connectors' video context, or for audio+video
`[video_ctx, audio_ctx]` concatenated on the last dim. Raw Gemma states (≈385 MB/prompt at full
size) are never stored.
"""

from __future__ import annotations

import json

import torch

from .base import TextBackend
from .streaming import encoding_bytes_per_prompt, place_text_encoder


GEMMA_FAMILIES = ("gemma3", "gemma4")


def gemma_family(config) -> str:
    """`"gemma3"` or `"gemma4"` from a transformers config (or its `model_type`)."""
    model_type = config if isinstance(config, str) else getattr(config, "model_type", "")
    for family in GEMMA_FAMILIES:
        if str(model_type).startswith(family):
            return family
    raise ValueError(f"text encoder model_type {model_type!r} is neither Gemma 3 nor Gemma 4; LTX-2 needs the "
                     "Gemma model its checkpoint was trained with")


class GemmaTextBackend(TextBackend):
    """Gemma 3 / Gemma 4 (Hub id or local folder) + `LTX2TextConnectors` (module or checkpoint path)."""

    name = "gemma"
    model_attributes = ("model", "connectors", "swapper")

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
        from .gemma_file import is_gemma_file, load_gemma_file

        single_file = is_gemma_file(text_encoder)
        self._setup(text_encoder, tokenizer, max_length, audio_video, device, dtype,
                    load_tokenizer=not single_file or tokenizer is not None)
        if single_file:
            # The official LTX-2.5 text-encoder file: Gemma, its tokenizer and config in one .safetensors.
            self.model, file_tokenizer = load_gemma_file(text_encoder, self.dtype)
            if tokenizer is None:
                self.tokenizer = file_tokenizer
        else:
            self.model = AutoModel.from_pretrained(text_encoder, dtype=self.dtype).eval()
        # The connectors were trained on left-padded Gemma prompts (see diffusers' LTX2Pipeline).
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.family = gemma_family(self.model.config)
        if self.tokenizer.bos_token_id is None:
            raise ValueError(f"--tokenizer {self._tokenizer_name}: has no <bos> token; the LTX-2 text path starts "
                             "every prompt with it (pass the Gemma tokenizer)")
        if isinstance(connectors, (str,)):
            connectors = _load_connectors(connectors, text_encoder if single_file else None)
        self.connectors = connectors.to(self.device, self.dtype).eval()
        registers = self.connectors.config.video_connector_num_learnable_registers
        if registers and self.max_length % registers:
            raise ValueError(
                f"--max_length {self.max_length} must be a multiple of the connectors' {registers} learnable "
                "registers (the official models use 1024)."
            )
        self._check_widths()
        # Last, with the connectors placed: whatever of the model the GPU cannot hold is streamed.
        text_cfg = getattr(self.model.config, "text_config", self.model.config)
        per_prompt = encoding_bytes_per_prompt(text_cfg.num_hidden_layers + 1, self.max_length,
                                               text_cfg.hidden_size, self.dtype)
        self.swapper, self.plan = place_text_encoder(self.model, self.device, per_prompt)

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
        return f"{self._identity_prefix()}|family={self.family}|bos=1|connectors={n}:{digest:.6e}"

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and mask as the official tokenizer makes them: stripped prompt, truncated, `<bos>`
        prepended when the tokenizer did not put it first, left-padded to `max_length`."""
        bos = self.tokenizer.bos_token_id
        rows = []
        for prompt in prompts:
            ids = self.tokenizer(prompt.strip(), truncation=True, max_length=self.max_length).input_ids
            if not ids or ids[0] != bos:
                ids = [bos, *ids][: self.max_length]
            rows.append(ids)
        padded = self.tokenizer.pad({"input_ids": rows}, padding="max_length", max_length=self.max_length,
                                    return_tensors="pt", return_attention_mask=True)
        return padded.input_ids.to(self.device), padded.attention_mask.to(self.device)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        step = self.plan.prompts_per_pass or len(prompts)
        passes = [self._encode_pass(prompts[i:i + step]) for i in range(0, len(prompts), step)]
        if len(passes) == 1:
            return passes[0]
        return torch.cat([text for text, _ in passes]), torch.cat([mask for _, mask in passes])

    def _encode_pass(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self._tokenize(prompts)
        try:
            out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        finally:
            if self.swapper is not None:
                self.swapper.reset()  # the next pass fetches its layers from the first streamed one again
        states = torch.stack(out.hidden_states, dim=-1).flatten(2, 3).to(self.dtype)
        del out
        video, audio, out_mask = self.connectors(states, mask, padding_side="left")
        text = torch.cat([video, audio], dim=-1) if self.audio_video else video
        return text, out_mask.bool()


def _load_connectors(path: str, text_encoder_file: str | None = None):
    """The connectors of `path`; LTX-2.5 keeps their text projection in the text-encoder file, so a
    transformer file without it is read together with `text_encoder_file`."""
    from ltxv2_diffusers.models.loading import (
        PROJECTION_PREFIX,
        load_components,
        load_required_components,
        official_files,
        tensor_shapes,
    )

    files = official_files(path) if text_encoder_file else None
    if files and not any(k.startswith(PROJECTION_PREFIX) for f in files for k in tensor_shapes(f)):
        return load_components(*files, text_encoder_file, components=["connectors"])["connectors"]
    return load_required_components(path, ["connectors"])["connectors"]


# A text cache records the Gemma family that made it, so a run fails before training when the checkpoint
# expects the other one (the embeddings have the same width, so nothing else would notice).
TEXT_CACHE_INFO = "ltxv2_text_encoder.json"


def text_encoder_family(text_encoder: str) -> str | None:
    """The Gemma family of a text encoder (folder, Hub id or official single file) from its config alone;
    None if it cannot be read."""
    from transformers import AutoConfig

    from .gemma_file import GEMMA_CONFIG_KEY, is_gemma_file

    try:
        if is_gemma_file(text_encoder):
            from safetensors import safe_open

            with safe_open(str(text_encoder), framework="pt") as f:
                return gemma_family(json.loads(f.metadata()[GEMMA_CONFIG_KEY]).get("model_type", ""))
        return gemma_family(AutoConfig.from_pretrained(text_encoder))
    except (OSError, ValueError):
        return None


def expected_gemma_family(transformer_config) -> str:
    """The Gemma family an LTX-2 transformer was trained with: Gemma 4 for LTX-2.5, Gemma 3 before."""
    from ltxv2_diffusers.models.official_config import model_version_of

    version = tuple(int(part) for part in model_version_of(transformer_config).split("."))
    return "gemma4" if version >= (2, 5) else "gemma3"


def write_text_cache_info(directories, family: str, text_encoder: str) -> None:
    """Record in each text cache directory which Gemma family made its embeddings."""
    import json
    from pathlib import Path

    for directory in directories:
        path = Path(directory) / TEXT_CACHE_INFO
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"family": family, "text_encoder": str(text_encoder)}), encoding="utf-8")
        tmp.replace(path)


def check_text_cache_family(directories, transformer_config, model: str) -> None:
    """Raise when a text cache was made with another Gemma family than `model`'s transformer expects."""
    import json
    from pathlib import Path

    want = expected_gemma_family(transformer_config)
    for directory in directories:
        path = Path(directory) / TEXT_CACHE_INFO
        if not path.is_file():
            continue
        info = json.loads(path.read_text(encoding="utf-8"))
        if info.get("family") in GEMMA_FAMILIES and info["family"] != want:
            raise ValueError(
                f"{directory}: the text cache was made with {info['family']} ({info.get('text_encoder')}), but "
                f"--ltxv2_model {model} expects {want}; re-run ltxv2-cache-text-encoder-outputs with the text "
                "encoder of that checkpoint"
            )
