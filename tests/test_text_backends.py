"""Text backends on tiny real models: gemma (+ LTX-2 connectors) and t5."""

from types import SimpleNamespace

import pytest
import torch

from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.text import get_text_backend
from ltxv2_diffusers.text.gemma import GemmaTextBackend
from ltxv2_diffusers.text.t5 import T5TextBackend
from ltxv2_diffusers.text.tiny import write_tiny_gemma, write_tiny_t5

PROMPTS = ["a red cat walks on the sea", "  the dog sits  "]


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory):
    return write_tiny_gemma(tmp_path_factory.mktemp("gemma"))


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    return write_tiny_t5(tmp_path_factory.mktemp("t5"))


@pytest.fixture(scope="module")
def connectors():
    return build_components("tiny", components=("connectors",))["connectors"]


def test_backends_are_registered_under_their_names(tiny_t5):
    backend = get_text_backend("t5")(text_encoder=tiny_t5, tokenizer=None, max_length=8, connectors=None,
                                     audio_video=False, device="cpu", dtype="fp32")
    assert isinstance(backend, T5TextBackend)
    with pytest.raises(ValueError, match="--text_encoder_backend 'nope' is not registered"):
        get_text_backend("nope")


def test_gemma_matches_the_diffusers_pipeline_path(tiny_gemma, connectors):
    from diffusers import LTX2Pipeline
    from transformers import AutoModel, AutoTokenizer

    backend = GemmaTextBackend(tiny_gemma, max_length=16, connectors=connectors, audio_video=True)
    text, mask = backend.encode(PROMPTS)
    assert text.shape == (2, 16, 48) and mask.shape == (2, 16) and mask.dtype == torch.bool

    # Independent path: diffusers' own prompt encoding, then the connectors as LTX2Pipeline calls them.
    fake_pipe = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(tiny_gemma),
                                text_encoder=AutoModel.from_pretrained(tiny_gemma).eval(),
                                _execution_device=torch.device("cpu"))
    with torch.no_grad():
        embeds, attn = LTX2Pipeline._get_gemma_prompt_embeds(fake_pipe, PROMPTS, max_sequence_length=16,
                                                              dtype=torch.float32)
        video, audio, ref_mask = connectors(embeds, attn, padding_side="left")
    torch.testing.assert_close(text, torch.cat([video, audio], dim=-1))
    assert torch.equal(mask, ref_mask.bool())

    video_only = GemmaTextBackend(tiny_gemma, max_length=16, connectors=connectors, audio_video=False)
    v_text, _ = video_only.encode(PROMPTS)
    torch.testing.assert_close(v_text, video)
    assert video_only.identity() != backend.identity()
    backend.free()
    assert not hasattr(backend, "model")


def test_gemma_rejects_bad_lengths_and_mismatched_encoders(tiny_gemma, connectors, tmp_path):
    with pytest.raises(ValueError, match="multiple of the connectors' 8 learnable registers"):
        GemmaTextBackend(tiny_gemma, max_length=12, connectors=connectors)
    with pytest.raises(ValueError, match="needs the LTX-2 text connectors"):
        GemmaTextBackend(tiny_gemma, max_length=16)
    wide = write_tiny_gemma(tmp_path / "wide", hidden_size=32)
    with pytest.raises(ValueError, match="connectors expect 3 of width 24"):
        GemmaTextBackend(wide, max_length=16, connectors=connectors)


def test_t5_is_the_masked_last_hidden_state(tiny_t5):
    from transformers import AutoTokenizer, T5EncoderModel

    backend = T5TextBackend(tiny_t5, max_length=12)
    text, mask = backend.encode(PROMPTS)
    tok = AutoTokenizer.from_pretrained(tiny_t5)
    ids = tok([p.strip() for p in PROMPTS], padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = T5EncoderModel.from_pretrained(tiny_t5)(**ids).last_hidden_state
    assert text.shape == (2, 12, 32)
    assert mask.tolist() == ids.attention_mask.bool().tolist()
    assert mask.sum(1).tolist() == [8, 4]  # words + </s>
    torch.testing.assert_close(text[mask], ref[mask])
    assert (text[~mask] == 0).all()
    assert T5TextBackend(tiny_t5, max_length=12, audio_video=True).encode(PROMPTS)[0].shape[-1] == 64
    assert T5TextBackend(tiny_t5, max_length=16).identity() != backend.identity()
