"""Our loader and adapters vs the official model of today (Lightricks/LTX-2 at 400fd31), fp32.

The fixtures in tests/fixtures/official/ were written by tests/fixtures/make_official_fixtures.py, which
runs the official code: tiny 2.0 / 2.3 / 2.5 transformer files in the official layout and the official
model's outputs for equal, different and per-token sigmas and (2.5) keyframe-marked tokens. Here the files
load strictly through `load_transformer` and the adapter, with the default `current` audio<->video rule,
reproduces every output; `legacy` (ltx-core 1.0.0) does not once video and audio sigmas differ. The 2.5
release folder (transformer + connectors file, text-encoder file with the projection) loads as split files,
and the text path after Gemma matches the official EmbeddingsProcessor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ltxv2_diffusers.models.adapter import LTXAVModelAdapter, LTXV2ModelAdapter
from ltxv2_diffusers.models.keymap import TRANSFORMER_PREFIX, transformer_key_to_official
from ltxv2_diffusers.models.loading import CheckpointKeyError, load_components, load_transformer, official_state_dict

FIXTURES = Path(__file__).parent / "fixtures" / "official"
VERSIONS = ("2.0", "2.3", "2.5")
RTOL = 1e-5


RELEASE_2_5 = FIXTURES / "ltx-2.5-release"


def _fixture(version: str):
    # 2.5 comes as the release's split layout; the folder stands for its files.
    source = RELEASE_2_5 if version == "2.5" else FIXTURES / f"ltx-{version}-tiny-transformer.safetensors"
    transformer = load_transformer(source, torch_dtype=torch.float32)
    return transformer, load_file(str(FIXTURES / f"ltx-{version}-tiny-outputs.safetensors"))


def _cases(record) -> list[str]:
    return sorted({k.split(".")[0] for k in record if k.endswith(".out.video")})


def _batch(record, case):
    batch = {k: record[k] for k in ("latents", "audio_latents", "text", "text_mask", "fps")}
    if f"{case}.keyframes_mask" in record:
        batch["keyframes_mask"] = record[f"{case}.keyframes_mask"]
    return batch


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", params=VERSIONS)
def official(request):
    return (request.param, *_fixture(request.param))


def test_fixture_files_load_strictly_with_version_switches(official):
    version, transformer, _ = official
    c = transformer.config
    assert c.ff_bias == (version != "2.5") and c.use_keyframes_abs_pos_embedding == (version == "2.5")
    assert c.gated_attn == (version != "2.0")
    assert transformer.transformer_blocks[0].ff.net[0].proj.bias is None if version == "2.5" else True


def test_av_matches_official_current_rule(official):
    version, transformer, record = official
    adapter = LTXAVModelAdapter.from_components(transformer)
    for case in _cases(record):
        sigmas = {m: record[f"{case}.sigmas.{m}"] for m in ("video", "audio")}
        noise = {m: record[f"{case}.noise.{m}"] for m in ("video", "audio")}
        with torch.no_grad():
            out = adapter(_batch(record, case), sigmas=sigmas, noise=noise)
        for m in ("video", "audio"):
            rel = _rel(out[m].pred, record[f"{case}.out.{m}"])
            assert rel <= RTOL, f"{version}/{case}/{m}: relative difference {rel:.2e}"


def test_video_only_matches_official_without_audio(official):
    version, transformer, record = official
    adapter = LTXV2ModelAdapter.from_components(transformer)
    for case in _cases(record):
        with torch.no_grad():
            out = adapter(_batch(record, case), sigmas={"video": record[f"{case}.sigmas.video"]},
                          noise={"video": record[f"{case}.noise.video"]})
        rel = _rel(out["video"].pred, record[f"{case}.out.video_only"])
        assert rel <= RTOL, f"{version}/{case}: relative difference {rel:.2e}"


def test_legacy_rule_differs_only_when_sigmas_differ(official):
    version, transformer, record = official
    adapter = LTXAVModelAdapter.from_components(transformer, av_timestep_rule="legacy")
    for case in ("equal", "different"):
        sigmas = {m: record[f"{case}.sigmas.{m}"] for m in ("video", "audio")}
        noise = {m: record[f"{case}.noise.{m}"] for m in ("video", "audio")}
        with torch.no_grad():
            out = adapter(_batch(record, case), sigmas=sigmas, noise=noise)
        rel = _rel(out["video"].pred, record[f"{case}.out.video"])
        if case == "equal":
            assert rel <= RTOL
        else:
            assert rel > 1e-3, f"{version}: legacy and current rules should differ with different sigmas"


def test_keyframes_mask_changes_only_marked_2_5_tokens():
    transformer, record = _fixture("2.5")
    adapter = LTXV2ModelAdapter.from_components(transformer)
    batch = _batch(record, "keyframes")
    kwargs = dict(sigmas={"video": record["keyframes.sigmas.video"]}, noise={"video": record["keyframes.noise.video"]})
    with torch.no_grad():
        marked = adapter(batch, **kwargs)["video"].pred
        unmarked = adapter({k: v for k, v in batch.items() if k != "keyframes_mask"}, **kwargs)["video"].pred
    assert not torch.allclose(marked, unmarked)
    with pytest.raises(ValueError, match="keyframes_mask"):
        adapter({**batch, "keyframes_mask": batch["keyframes_mask"][:, :3]}, **kwargs)


def test_release_folder_and_split_files_load_the_text_path_like_official():
    transformer_file = next((RELEASE_2_5 / "diffusion_models").glob("*.safetensors"))
    text_file = next((RELEASE_2_5 / "text_encoders").glob("*.safetensors"))
    by_folder = load_components(RELEASE_2_5, torch_dtype=torch.float32)
    by_files = load_components(transformer_file, text_file, components=("connectors",))
    assert set(by_folder) == {"transformer", "connectors", "vae"}
    for name, p in by_folder["connectors"].state_dict().items():
        assert torch.equal(p, by_files["connectors"].state_dict()[name]), name
    record = load_file(str(FIXTURES / "ltx-2.5-tiny-text-outputs.safetensors"))
    with torch.no_grad():
        video, audio, mask = by_folder["connectors"](
            record["hidden_states"].flatten(2, 3), record["attention_mask"], padding_side="left"
        )
    assert torch.equal(mask.long(), record["mask"].long())
    for ours, ref in ((video, record["video"]), (audio, record["audio"])):
        assert _rel(ours, ref) <= RTOL, f"relative difference {_rel(ours, ref):.2e}"


def test_connectors_without_the_text_encoder_file_name_what_is_missing():
    transformer_file = next((RELEASE_2_5 / "diffusion_models").glob("*.safetensors"))
    assert set(load_components(transformer_file, components=("transformer",))) == {"transformer"}
    with pytest.raises(CheckpointKeyError, match="text_embedding_projection"):
        load_components(transformer_file, components=("connectors",))


def test_gemma4_prompts_embed_like_official():
    """The official LTX-2.5 text-encoder file (a tiny Gemma 4 packed by the official code, with the text
    projection) through our gemma backend and the release's connectors: the official token ids (<bos>
    prepended, left padding) and embeddings."""
    from ltxv2_diffusers.text.gemma import GemmaTextBackend, text_encoder_family

    record = load_file(str(FIXTURES / "gemma4-tiny-text-outputs.safetensors"))
    with safe_open(str(FIXTURES / "gemma4-tiny-text-outputs.safetensors"), framework="pt") as f:
        prompts = json.loads(f.metadata()["prompts"])
    text_file = next((RELEASE_2_5 / "text_encoders").glob("*.safetensors"))
    assert text_encoder_family(str(text_file)) == "gemma4"
    connectors = load_components(RELEASE_2_5, components=("connectors",))["connectors"]
    backend = GemmaTextBackend(str(text_file), max_length=128, connectors=connectors,
                               audio_video=True, device="cpu", dtype=torch.float32)
    assert backend.family == "gemma4"
    ids, _ = backend._tokenize(prompts)
    text, mask = backend.encode(prompts)
    vw = connectors.config.video_hidden_dim
    for i in range(len(prompts)):
        assert torch.equal(ids[i], record[f"{i}.input_ids"])
        assert torch.equal(mask[i].long(), record[f"{i}.mask"].long())
        for ours, ref in ((text[i, :, :vw], record[f"{i}.video"]), (text[i, :, vw:], record[f"{i}.audio"])):
            assert _rel(ours, ref) <= RTOL, f"prompt {i}: relative difference {_rel(ours, ref):.2e}"


def test_gemma4_file_gives_the_projection_to_a_transformer_file_alone():
    """`--text_encoder gemma4-...-with-proj.safetensors --ltxv2_model ...-transformer.safetensors`: the
    connectors come from the transformer file, their projection from the text-encoder file."""
    from ltxv2_diffusers.text.gemma import GemmaTextBackend

    text_file = next((RELEASE_2_5 / "text_encoders").glob("*.safetensors"))
    transformer_file = next((RELEASE_2_5 / "diffusion_models").glob("*.safetensors"))
    backend = GemmaTextBackend(str(text_file), max_length=128, connectors=str(transformer_file), audio_video=True,
                               device="cpu", dtype=torch.float32)
    reference = load_components(RELEASE_2_5, components=("connectors",))["connectors"]
    for name, p in reference.state_dict().items():
        assert torch.equal(backend.connectors.state_dict()[name], p), name


def test_diffusion_decoder_vae_file_encodes_like_the_official_encoder():
    """LTX-2.5's default video VAE file (diffusion decoder, nested config, bare keys): its encoder loads
    strictly and encodes like the official `VideoEncoder`; decoding names the file to pass instead."""
    from ltxv2_diffusers.models.loading import is_encoder_only

    vae = load_components(RELEASE_2_5 / "vae" / "ltx-2.5-tiny-video-vae.safetensors")["vae"]
    assert is_encoder_only(vae)
    record = load_file(str(FIXTURES / "ltx-2.5-tiny-vae-encoder-outputs.safetensors"))
    with torch.no_grad():
        means = vae.encode(record["clip"].float()).latent_dist.mean
    shape = (1, -1, 1, 1, 1)
    normalized = (means - vae.latents_mean.view(shape)) / vae.latents_std.view(shape)
    assert _rel(normalized, record["latents"]) <= RTOL, f"relative difference {_rel(normalized, record['latents']):.2e}"
    with pytest.raises(RuntimeError, match="video-vae-conv"):
        vae.decode(means)


def test_official_layout_2_5_lora_fuses_like_the_official_loader():
    """An official-layout LoRA on the tiny 2.5 model: our reader + fuse changes exactly the weights the
    official loader (400fd31) changes, to within one bf16 rounding (it fuses in bf16, we in fp32)."""
    from ltxv2_diffusers.lora import apply_lora, read_lora

    lora = read_lora(FIXTURES / "ltx-2.5-tiny-lora.safetensors")
    assert lora.metadata["base_model_version"] == "2.5.0"
    transformer = load_transformer(RELEASE_2_5, torch_dtype=torch.bfloat16)
    before = {k: v.clone() for k, v in transformer.state_dict().items()}
    apply_lora(transformer, lora)
    ours = official_state_dict(transformer=transformer)
    changed = {TRANSFORMER_PREFIX + transformer_key_to_official(k)
               for k, v in transformer.state_dict().items() if not torch.equal(v, before[k])}
    official = load_file(str(FIXTURES / "ltx-2.5-tiny-lora-fused.safetensors"))
    assert changed == set(official)
    for key, ref in official.items():
        diff = float((ours[key].float() - ref).abs().max() / ref.abs().max())
        assert diff <= 2**-7, f"{key}: {diff:.2e}"

