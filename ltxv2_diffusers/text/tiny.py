"""Tiny random text encoders with real architectures, saved like Hub models (for tests and the demo).

`write_tiny_gemma(folder)` (Gemma 3) and `write_tiny_gemma4(folder)` (Gemma 4, for `tiny-2.5`) match the
tiny presets' connectors (hidden 24, 2 layers -> 3 hidden states); `write_tiny_t5(folder)` is a small T5 encoder. Both ship a word-level tokenizer built in
code, so nothing is downloaded.
"""

from __future__ import annotations

import os

import torch

_WORDS = (
    "a an the of and in on with at to is are was red green blue black white small large cat dog "
    "person man woman child car tree house sky sea water fire light dark walks runs sits flies "
    "video audio music voice sound speaks sings day night slowly quickly camera moves close wide shot"
).split()


def _word_tokenizer(specials: list[str], pad: str, eos: str, bos: str | None, unk: str, add_bos: bool = True):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in _WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos is not None and not add_bos:
        pass  # Gemma 4's tokenizer knows <bos> but does not put it first; the backend does
    elif bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, vocab[bos])]
        )
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", special_tokens=[(eos, vocab[eos])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token=unk,
        **({"bos_token": bos} if bos else {}),
    ), len(vocab)


def write_tiny_gemma(folder: str | os.PathLike, hidden_size: int = 24, num_layers: int = 2, seed: int = 0) -> str:
    """Save a random Gemma-3 text model + tokenizer to `folder`; returns the folder path."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer, vocab_size = _word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], "<pad>", "<eos>", "<bos>", "<unk>")
    tokenizer.padding_side = "left"
    config = Gemma3TextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=hidden_size // 2,
        query_pre_attn_scalar=hidden_size // 2,
        max_position_embeddings=4096,
        sliding_window=64,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    return _save_random(Gemma3ForCausalLM, config, tokenizer, folder, seed)


def write_tiny_gemma4(folder: str | os.PathLike, hidden_size: int = 24, num_layers: int = 2, seed: int = 0) -> str:
    """Save a random Gemma 4 (`Gemma4UnifiedForConditionalGeneration`, text only, the LTX-2.5 encoder's
    class) + a tokenizer that, like Gemma 4's, does not add `<bos>`; for the `tiny-2.5` connectors."""
    from transformers import Gemma4UnifiedConfig, Gemma4UnifiedForConditionalGeneration

    tokenizer, vocab_size = _word_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>"], "<pad>", "<eos>", "<bos>", "<unk>",
                                            add_bos=False)
    tokenizer.padding_side = "left"
    text = dict(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden_size // 2,
        max_position_embeddings=4096, sliding_window=64,
        layer_types=["sliding_attention"] * (num_layers - 1) + ["full_attention"],
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    config = Gemma4UnifiedConfig(text_config=text, vision_config=None, audio_config=None)
    return _save_random(Gemma4UnifiedForConditionalGeneration, config, tokenizer, folder, seed)


def write_tiny_t5(folder: str | os.PathLike, d_model: int = 32, num_layers: int = 2, seed: int = 0) -> str:
    """Save a random T5 encoder + tokenizer to `folder`; returns the folder path."""
    from transformers import T5Config, T5EncoderModel

    tokenizer, vocab_size = _word_tokenizer(["<pad>", "</s>", "<unk>"], "<pad>", "</s>", None, "<unk>")
    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 2, d_ff=2 * d_model,
        num_layers=num_layers, num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    return _save_random(T5EncoderModel, config, tokenizer, folder, seed)


def _save_random(model_cls, config, tokenizer, folder: str | os.PathLike, seed: int) -> str:
    """Build `model_cls(config)` with seeded random weights and save it with `tokenizer` to `folder`."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    folder = os.fspath(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
