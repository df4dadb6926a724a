"""Official single-file checkpoints and diffusers folders: save, load, round trips, ltx-core reads our files."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltxv2_diffusers.models import keymap
from ltxv2_diffusers.models.loading import (
    CheckpointKeyError,
    detect_layout,
    load_components,
    load_transformer,
    save_official_checkpoint,
)
from ltxv2_diffusers.models.presets import build_components

PRESETS = ("tiny", "tiny-2.3")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """{preset: (components, official file)} built once for the module."""
    out = {}
    for preset in PRESETS:
        comps = build_components(preset, seed=7)
        path = tmp_path_factory.mktemp(preset) / "model.safetensors"
        save_official_checkpoint(path, **comps)
        out[preset] = (comps, path)
    return out


def _public(config) -> dict:
    norm = lambda v: [norm(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    return {k: norm(v) for k, v in dict(config).items() if not k.startswith("_")}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name


@pytest.mark.parametrize("preset", PRESETS)
def test_official_round_trip_is_exact(written, preset, tmp_path):
    comps, path = written[preset]
    loaded = load_components(path)
    assert set(loaded) == set(comps)
    for name in comps:
        assert type(loaded[name]) is type(comps[name])
        assert _public(loaded[name].config) == _public(comps[name].config)
        _assert_same_weights(comps[name], loaded[name])
    again = save_official_checkpoint(tmp_path / "again.safetensors", **loaded)
    first, second = load_file(str(path)), load_file(again)
    assert set(first) == set(second)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_file_layout_and_metadata(written):
    _, path = written["tiny-2.3"]
    with safe_open(str(path), framework="pt") as f:
        keys, config = set(f.keys()), json.loads(f.metadata()["config"])
    assert {"transformer", "vae", "audio_vae", "vocoder"} <= set(config)
    assert config["transformer"]["cross_attention_adaln"] and config["transformer"]["apply_gated_attention"]
    assert "model.diffusion_model.prompt_adaln_single.linear.weight" in keys  # the 2.3 rename
    assert "model.diffusion_model.audio_prompt_adaln_single.linear.weight" in keys
    assert "text_embedding_projection.video_aggregate_embed.bias" in keys
    assert "model.diffusion_model.video_embeddings_connector.learnable_registers" in keys
    assert "vae.per_channel_statistics.mean-of-means" in keys and "audio_vae.per_channel_statistics.std-of-means" in keys
    assert "vocoder.bwe_generator.conv_pre.weight" in keys
    assert not any(k.startswith("model.diffusion_model.prompt_adaln.") for k in keys)


def test_partial_file_and_component_selection(tmp_path):
    comps = build_components("tiny", seed=1, components=("transformer", "vae"))
    path = save_official_checkpoint(tmp_path / "tv.safetensors", **comps)
    loaded = load_components(path)
    assert set(loaded) == {"transformer", "vae"}
    only = load_components(path, components=("vae", "audio_vae"))
    assert set(only) == {"vae"}
    transformer = load_transformer(path, torch_dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in transformer.parameters())
    vae_only = save_official_checkpoint(tmp_path / "v.safetensors", vae=comps["vae"])
    with pytest.raises(ValueError, match="no LTX-2 transformer"):
        load_transformer(vae_only)


def _rewrite(src, dst, edit):
    tensors = load_file(str(src))
    with safe_open(str(src), framework="pt") as f:
        metadata = f.metadata()
    edit(tensors)
    save_file(tensors, str(dst), metadata=metadata)
    return dst


def test_missing_and_unexpected_keys_are_listed(written, tmp_path):
    _, path = written["tiny"]
    gone = "model.diffusion_model.transformer_blocks.1.attn1.q_norm.weight"
    missing = _rewrite(path, tmp_path / "missing.safetensors", lambda t: t.pop(gone))
    with pytest.raises(CheckpointKeyError, match=r"Missing from the file: transformer_blocks\.1\.attn1\.norm_q\.weight"):
        load_components(missing)
    extra = "model.diffusion_model.transformer_blocks.0.bogus.weight"
    unexpected = _rewrite(path, tmp_path / "unexpected.safetensors", lambda t: t.__setitem__(extra, torch.zeros(2)))
    with pytest.raises(CheckpointKeyError, match=f"Unexpected in the file: {extra}"):
        load_components(unexpected)
    stray = _rewrite(path, tmp_path / "stray.safetensors", lambda t: t.__setitem__("lm_head.weight", torch.zeros(2)))
    with pytest.raises(CheckpointKeyError, match="lm_head.weight"):
        load_components(stray)


def test_a_prequantized_fp8_checkpoint_is_named_as_such(written, tmp_path):
    """An fp8 file (e4m3 weights with per-tensor scales beside them, as the official and ComfyUI fp8 files
    store them) is refused in one line saying what to pass instead."""
    _, path = written["tiny"]
    weight = "model.diffusion_model.transformer_blocks.0.attn1.to_k.weight"

    def to_fp8(t):
        t[weight] = t[weight].to(torch.float8_e4m3fn)
        t[weight.replace(".weight", ".weight_scale")] = torch.tensor(0.01)
        t[weight.replace(".weight", ".input_scale")] = torch.tensor(0.02)

    fp8 = _rewrite(path, tmp_path / "fp8.safetensors", to_fp8)
    with pytest.raises(CheckpointKeyError, match=r"fp8\.safetensors: a pre-quantized fp8 checkpoint \(e4m3 weights "
                                                  r"with scales, e\.g\. .*to_k\.input_scale\).*pass the bf16 "
                                                  r"checkpoint.*--fp8_base"):
        load_components(fp8)


def test_unused_statistics_survive_the_round_trip(written, tmp_path):
    _, path = written["tiny"]
    extras = {"vae.per_channel_statistics.channel": torch.arange(128.0), "vae.per_channel_statistics.mean-of-stds": torch.rand(128)}
    src = _rewrite(path, tmp_path / "stats.safetensors", lambda t: t.update(extras))
    loaded = load_components(src, components=("vae",))
    out = load_file(save_official_checkpoint(tmp_path / "back.safetensors", **loaded))
    for key, value in extras.items():
        assert torch.equal(out[key], value)


def test_layout_detection_and_backend_flag(written, tmp_path):
    comps, path = written["tiny"]
    assert detect_layout(path) == "official"
    folder = tmp_path / "single"
    comps["transformer"].save_pretrained(folder)
    assert detect_layout(folder) == "diffusers"
    assert detect_layout("Lightricks/LTX-2") == "diffusers"
    with pytest.raises(ValueError, match="does not fit"):
        load_components(path, backend="diffusers")
    with pytest.raises(ValueError, match="does not fit"):
        load_components(folder, backend="official")
    with pytest.raises(ValueError, match="choose one of"):
        load_components(path, backend="comfy")
    bare = tmp_path / "bare.safetensors"
    save_file({"x": torch.zeros(1)}, str(bare))
    with pytest.raises(ValueError, match="no 'config' in the safetensors metadata"):
        load_components(bare)
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "absent.safetensors")


def test_diffusers_folder_via_save_pretrained(written, tmp_path):
    comps, _ = written["tiny-2.3"]
    index = {"_class_name": "LTX2Pipeline", "_diffusers_version": "0.42.1"}
    for name, model in comps.items():
        model.save_pretrained(tmp_path / name)
        index[name] = ["diffusers", type(model).__name__]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    loaded = load_components(tmp_path, backend="diffusers")
    assert set(loaded) == set(comps)
    for name in comps:
        _assert_same_weights(comps[name], loaded[name])
    (tmp_path / "model_index.json").unlink()  # component subfolders alone are enough
    assert set(load_components(tmp_path, components=("vae", "vocoder"))) == {"vae", "vocoder"}
    single = load_transformer(tmp_path / "transformer")
    _assert_same_weights(comps["transformer"], single)
    # and from the diffusers folder back to an official file, identical to writing the originals
    a = load_file(save_official_checkpoint(tmp_path / "a.safetensors", **loaded))
    b = load_file(save_official_checkpoint(tmp_path / "b.safetensors", **comps))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------------
# ltx-core (the official reference) reads our files
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ltx_core():
    """ltx-core's loaders and configurators. Its audio package imports torchaudio at module level, only
    for mel preprocessing we don't call; torchaudio has no build for this torch, so when it is absent a
    placeholder module is present only while ltx-core's audio modules import (and removed afterwards,
    so nothing else sees it)."""
    pytest.importorskip("ltx_core")
    import diffusers  # noqa: F401  (import before the placeholder: transformers probes torchaudio once)
    import transformers  # noqa: F401

    placeholder = "torchaudio" not in sys.modules and not _has_torchaudio()
    if placeholder:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        from ltx_core.model.audio_vae import model_configurator as audio
    finally:
        if placeholder:
            del sys.modules["torchaudio"]
    from ltx_core.loader import SingleGPUModelBuilder
    from ltx_core.model.transformer import model_configurator as transformer
    from ltx_core.model.video_vae import model_configurator as video
    from ltx_core.text_encoders.gemma.encoders import encoder_configurator as text

    return types.SimpleNamespace(Builder=SingleGPUModelBuilder, transformer=transformer, video=video, audio=audio, text=text)


def _has_torchaudio() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchaudio") is not None


def _build(lc, configurator, path, sd_ops):
    model = lc.Builder(model_class_configurator=configurator, model_path=str(path), model_sd_ops=sd_ops).build(
        device=torch.device("cpu")
    )
    assert not [n for n, p in model.named_parameters() if p.is_meta], "ltx-core left parameters uninitialized"
    return model


def _assert_matches(official: dict, ours: dict, to_ours):
    mapped = {to_ours(k): v for k, v in official.items()}
    assert set(mapped) == set(ours), set(mapped) ^ set(ours)
    for name, value in mapped.items():
        assert torch.equal(value, ours[name]), name


@pytest.mark.parametrize("preset", PRESETS)
def test_ltx_core_builders_read_every_component(written, ltx_core, preset):
    comps, path = written[preset]
    lc = ltx_core
    model = _build(lc, lc.transformer.LTXModelConfigurator, path, lc.transformer.LTXV_MODEL_COMFY_RENAMING_MAP)
    _assert_matches(model.state_dict(), comps["transformer"].state_dict(), keymap.transformer_key_from_official)

    vae = comps["vae"].state_dict()
    for half, ops in (("encoder", lc.video.VAE_ENCODER_COMFY_KEYS_FILTER), ("decoder", lc.video.VAE_DECODER_COMFY_KEYS_FILTER)):
        configurator = getattr(lc.video, f"Video{half.capitalize()}Configurator")
        official = _build(lc, configurator, path, ops).state_dict()
        ours = {k: v for k, v in vae.items() if k.startswith(half + ".") or k.startswith("latents_")}
        _assert_matches(official, ours, lambda k, h=half: keymap.vae_key_from_official(k if k.startswith("per_channel") else f"{h}.{k}"))

    audio = comps["audio_vae"].state_dict()
    for half, ops in (("encoder", lc.audio.AUDIO_VAE_ENCODER_COMFY_KEYS_FILTER), ("decoder", lc.audio.AUDIO_VAE_DECODER_COMFY_KEYS_FILTER)):
        configurator = getattr(lc.audio, f"Audio{half.capitalize()}Configurator")
        official = _build(lc, configurator, path, ops).state_dict()
        ours = {k: v for k, v in audio.items() if k.startswith(half + ".") or k.startswith("latents_")}
        _assert_matches(official, ours, lambda k, h=half: keymap.audio_vae_key_from_official(k if k.startswith("per_channel") else f"{h}.{k}"))

    vocoder = _build(lc, lc.audio.VocoderConfigurator, path, lc.audio.VOCODER_COMFY_KEYS_FILTER)
    _assert_matches(vocoder.state_dict(), comps["vocoder"].state_dict(), keymap.vocoder_key_from_official)


@pytest.mark.parametrize("preset", PRESETS)
def test_ltx_core_connector_keys(written, ltx_core, preset):
    """ltx-core's own key ops for the text side find exactly our connector tensors. (Its connector
    configurator fixes 128 learnable registers and the Gemma-3 12B width, so the tiny connectors are
    compared through its key mapping rather than a full build.)"""
    comps, path = written[preset]
    from ltx_core.loader import SafetensorsStateDictLoader

    sd = SafetensorsStateDictLoader().load(str(path), sd_ops=ltx_core.text.EMBEDDINGS_PROCESSOR_KEY_OPS).sd
    ours = comps["connectors"].state_dict()
    rename = {"video_connector.": "model.diffusion_model.video_embeddings_connector.",
              "audio_connector.": "model.diffusion_model.audio_embeddings_connector.",
              "feature_extractor.": "text_embedding_projection."}

    def to_ours(key):
        for new, old in rename.items():
            if key.startswith(new):
                return keymap.connectors_key_from_official(old + key[len(new):])
        raise AssertionError(key)

    _assert_matches(sd, ours, to_ours)
