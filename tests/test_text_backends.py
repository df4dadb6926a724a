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


def test_gemma_with_streamed_layers_and_several_passes_encodes_the_same(tiny_gemma, connectors):
    """The text encoder as a GPU too small for it runs it (here on the CPU, copies synchronous): its last layer
    streamed from host memory through the block swapper, and a batch split into passes of one prompt."""
    from ltxv2_diffusers.text.streaming import TextPlan, decoder_layers, stream_layers

    reference, reference_mask = GemmaTextBackend(tiny_gemma, max_length=16, connectors=connectors,
                                                 audio_video=True).encode(PROMPTS)
    backend = GemmaTextBackend(tiny_gemma, max_length=16, connectors=connectors, audio_video=True)
    assert backend.swapper is None and backend.plan == TextPlan(0, None)  # on a CPU: whole, all at once
    layers = decoder_layers(backend.model)
    assert len(layers) == backend.model.config.num_hidden_layers
    backend.swapper = stream_layers(backend.model, 1, "cpu")
    assert layers[-1].self_attn.q_proj.weight.numel() == 0  # dropped: in host memory until fetched
    for _ in range(2):  # the second encode fetches the streamed layer again
        text, mask = backend.encode(PROMPTS)
        assert torch.equal(text, reference) and torch.equal(mask, reference_mask)
        assert layers[-1].self_attn.q_proj.weight.numel() == 0
    backend.plan = TextPlan(1, 1)
    text, mask = backend.encode(PROMPTS)
    torch.testing.assert_close(text, reference)
    assert torch.equal(mask, reference_mask)
    backend.free()
    assert not hasattr(backend, "swapper")


@pytest.mark.parametrize("free_gib, streamed", [(80, 0), (30, 0), (23, "some"), (12, "most"), (7.5, "one prompt"),
                                                (6, "none fits")])
def test_a_text_encoder_larger_than_the_free_memory_streams_the_fewest_layers_that_fit(free_gib, streamed):
    """Gemma 3 12B's sizes (48 layers of 0.43 GiB, 23.6 GiB in all) against the GPU memory free for it: whole
    when it fits with room for four prompts, else the fewest layers streamed that leave that room; a pass
    encodes what the rest holds."""
    from ltxv2_diffusers.text.streaming import (IN_FLIGHT, MARGIN, RESERVED_PROMPTS, encoding_bytes_per_prompt,
                                                 plan_text_encoder)

    gib = 2**30
    total, layer, n = int(23.6 * gib), int(0.43 * gib), 48
    per_prompt = encoding_bytes_per_prompt(49, 1024, 3840, torch.bfloat16)
    assert 0.85 * gib < per_prompt < 0.95 * gib  # 385 MB of hidden states per prompt, kept and stacked
    free = int(free_gib * gib)
    if streamed == "none fits":
        with pytest.raises(ValueError, match=r"needs at least [\d.]+ GiB of free GPU memory even with 47 of its 48"):
            plan_text_encoder(total, layer, n, free, per_prompt)
        return
    plan = plan_text_encoder(total, layer, n, free, per_prompt)
    resident = total - plan.streamed * layer + (IN_FLIGHT * layer if plan.streamed else 0)
    assert resident + plan.prompts_per_pass * per_prompt <= free - MARGIN
    assert plan.prompts_per_pass >= (RESERVED_PROMPTS if streamed not in ("most", "one prompt") else 1)
    if streamed == "one prompt":  # no room for four prompts beside what must stay: passes of fewer
        assert plan.streamed > n // 2 and plan.prompts_per_pass < RESERVED_PROMPTS
        return
    if streamed == 0:
        assert plan.streamed == 0
    else:
        assert 0 < plan.streamed < n
        assert (plan.streamed > n // 2) == (streamed == "most")
        fewer = total - (plan.streamed - 1) * layer + IN_FLIGHT * layer  # one layer fewer would not leave the room
        assert fewer + RESERVED_PROMPTS * per_prompt > free - MARGIN


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_a_text_encoder_placed_on_a_device_too_small_for_it_gives_the_same_states(tmp_path, device):
    """`place_text_encoder` told the device has room for all but half a layer: three of four layers streamed
    (two in flight), the hidden states unchanged, pass after pass (on a GPU: pinned memory, side stream)."""
    from transformers import AutoModel

    from ltxv2_diffusers.text import streaming

    folder = write_tiny_gemma(tmp_path / "gemma4layers", num_layers=4)
    def states(model):
        with torch.no_grad():
            return torch.stack(model(input_ids=ids, output_hidden_states=True).hidden_states)

    reference_model = AutoModel.from_pretrained(folder).eval().to(device)
    vocab = getattr(reference_model.config, "text_config", reference_model.config).vocab_size
    ids = torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    reference = states(reference_model)
    model = AutoModel.from_pretrained(folder).eval()
    layers = streaming.decoder_layers(model)
    total = streaming.module_bytes(model)
    layer = max(streaming.streamed_bytes(m.requires_grad_(False)) for m in layers)
    per_prompt = 1 << 20
    free = streaming.MARGIN + streaming.RESERVED_PROMPTS * per_prompt + total - layer // 2
    swapper, plan = streaming.place_text_encoder(model, device, per_prompt, free=free)
    assert plan.streamed == 3 and swapper is not None
    assert layers[1].self_attn.q_proj.weight.numel() == 0  # streamed: in host memory until fetched
    for _ in range(2):
        assert torch.equal(states(model), reference)
        swapper.reset()
