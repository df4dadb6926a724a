"""LTX-2.5: presets, split files / release folders, config metadata, training flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ltxv2_diffusers.models.loading import (
    CheckpointKeyError,
    load_components,
    official_files,
    save_official_checkpoint,
    save_official_release,
)
from ltxv2_diffusers.models.official_config import (
    OfficialConfigError,
    diffusers_configs_from_official,
    model_version_of,
    official_config_from_diffusers,
)
from ltxv2_diffusers.models.presets import build_components, preset_config


@pytest.fixture(scope="module")
def tiny25():
    return build_components("tiny-2.5", seed=1)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_2_5_presets_are_2_3_plus_the_two_transformer_changes():
    for tiny, full in (("tiny-2.3", "tiny-2.5"), ("ltx-2.3", "ltx-2.5")):
        old, new = preset_config(tiny), preset_config(full)
        assert new["transformer"] == {**old["transformer"], "ff_bias": False, "use_keyframes_abs_pos_embedding": True}
        assert {k: v for k, v in new.items() if k != "transformer"} == {k: v for k, v in old.items() if k != "transformer"}
    assert model_version_of(preset_config("ltx-2.5")["transformer"]) == "2.5.0"
    assert model_version_of(preset_config("ltx-2.3")["transformer"]) == "2.3.0"
    assert model_version_of(preset_config("ltx-2.0")["transformer"]) == "2.0.0"


def test_2_5_official_config_round_trips(tiny25):
    configs = {name: (type(m).__name__, dict(m.config)) for name, m in tiny25.items()}
    official = official_config_from_diffusers(configs)
    assert official["transformer"]["ff_bias"] is False
    assert official["transformer"]["use_keyframes_abs_pos_embedding"] is True
    back = diffusers_configs_from_official(official)
    for key in ("ff_bias", "use_keyframes_abs_pos_embedding", "gated_attn", "cross_attn_mod"):
        assert back["transformer"][1][key] == tiny25["transformer"].config[key]


def test_single_file_records_model_version_and_loads_strictly(tiny25, tmp_path):
    path = save_official_checkpoint(tmp_path / "tiny-2.5.safetensors", **tiny25)
    with safe_open(path, framework="pt") as f:
        assert f.metadata()["model_version"] == "2.5.0"
    loaded = load_components(path)
    for name in tiny25:
        _same_weights(loaded[name], tiny25[name])


def test_release_folder_and_split_files(tiny25, tmp_path):
    written = save_official_release(tmp_path / "release", "tiny", **tiny25)
    assert sorted(p.relative_to(tmp_path / "release").as_posix() for p in written) == [
        "diffusion_models/tiny-transformer.safetensors", "text_encoders/tiny-text-projection.safetensors",
        "vae/tiny-audio-vae.safetensors", "vae/tiny-video-vae-conv.safetensors",
    ]
    video_vae = tmp_path / "release" / "vae" / "tiny-video-vae-conv.safetensors"
    assert not any(k.startswith("vae.") for k in load_file(str(video_vae)))  # bare keys, as Comfy splits them
    by_folder = load_components(tmp_path / "release")
    by_files = load_components(*written)
    for name in tiny25:
        _same_weights(by_folder[name], tiny25[name])
        _same_weights(by_files[name], tiny25[name])
    # Each VAE on its own, as the cache jobs load them.
    assert set(load_components(video_vae)) == {"vae"}
    assert set(load_components(tmp_path / "release" / "vae" / "tiny-audio-vae.safetensors")) == {"audio_vae", "vocoder"}


def test_release_folder_prefers_the_convolutional_video_vae(tiny25, tmp_path):
    import shutil

    save_official_release(tmp_path, "tiny", **tiny25)
    # A diffusion-decoder VAE (nested encoder/decoder config) beside the conv one is left out.
    shutil.copy(Path(__file__).parent / "fixtures" / "official" / "ltx-2.5-release" / "vae" / "ltx-2.5-tiny-video-vae.safetensors", tmp_path / "vae" / "tiny-video-vae.safetensors")
    assert all("tiny-video-vae.safetensors" != p.name for p in official_files(tmp_path))
    _same_weights(load_components(tmp_path, components=("vae",))["vae"], tiny25["vae"])


def test_split_files_errors_name_the_problem(tiny25, tmp_path):
    written = save_official_release(tmp_path, "tiny", **tiny25)
    transformer_file = written[0]
    with pytest.raises(CheckpointKeyError, match="in both"):
        load_components(transformer_file, transformer_file)
    with pytest.raises(ValueError, match="several sources"):
        load_components(transformer_file, tmp_path / "nothing-here")
    tensors = load_file(str(transformer_file))
    with safe_open(str(transformer_file), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    config["transformer"]["shiny_new_switch"] = True
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"config": json.dumps(config)})
    with pytest.raises(OfficialConfigError, match="shiny_new_switch"):
        load_components(bad)
    tensors.pop("model.diffusion_model.transformer_blocks.0.ff.net.2.weight")
    missing = tmp_path / "missing.safetensors"
    save_file(tensors, str(missing), metadata={"config": json.dumps(config | {"transformer": {
        k: v for k, v in config["transformer"].items() if k != "shiny_new_switch"}})})
    with pytest.raises(CheckpointKeyError, match="transformer_blocks.0.ff.net.2.weight"):
        load_components(missing, components=("transformer",))


def _trained_lora(preset: str, version: str):
    from ltxv2_diffusers.lora import add_lora, lora_from_model, lora_parameters

    transformer = build_components(preset, seed=2, components=("transformer",))["transformer"]
    add_lora(transformer, "av", 4, 4.0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return lora_from_model(transformer, metadata={"base_model_version": version})


def test_2_5_lora_official_layout_and_diffusers_pipeline(tmp_path):
    from diffusers import LTX2ConditionPipeline, LTX2Pipeline

    from ltxv2_diffusers.lora import read_lora, save_lora

    lora = _trained_lora("tiny-2.5", "2.5.0")
    official, diffusers_dir = save_lora(lora, tmp_path, "l25")
    with safe_open(str(official), framework="pt") as f:
        assert f.metadata()["base_model_version"] == "2.5.0"
        assert all(k.startswith("diffusion_model.") for k in f.keys())
    assert read_lora(official).metadata["base_model_version"] == "2.5.0"
    # diffusers' own loaders (text-to-video and condition pipelines) take the official layout on a 2.5
    # transformer, with our weights.
    for pipeline_class in (LTX2Pipeline, LTX2ConditionPipeline):
        transformer = build_components("tiny-2.5", seed=2, components=("transformer",))["transformer"]
        pipeline_class.load_lora_into_transformer(pipeline_class.lora_state_dict(str(official)),
                                                  transformer=transformer, adapter_name="t")
        name, module = next(iter(lora.modules.items()))
        layer = transformer.get_submodule(name)
        assert torch.allclose(layer.lora_A["t"].weight, module.down)
        assert torch.allclose(layer.lora_B["t"].weight, module.up)


def test_2_3_lora_on_2_5_model_applies_and_warns_once():
    from ltxv2_diffusers.lora import apply_lora

    lora = _trained_lora("tiny-2.3", "2.3.0")
    target = build_components("tiny-2.5", seed=2, components=("transformer",))["transformer"]
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.warns(UserWarning, match="trained on LTX-2 2.3.0 and is applied to a 2.5.0"):
        apply_lora(target, lora)
    assert any(not torch.equal(before[k], v) for k, v in target.state_dict().items())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_lora(build_components("tiny-2.5", seed=2, components=("transformer",))["transformer"], lora)


@pytest.mark.slow
def test_demo_tiny_2_5_runs_on_split_files(tmp_path, capsys):
    """`ltxv2-demo --preset tiny-2.5`: release folder, the three cache jobs on split files, training, preview."""
    from ltxv2_diffusers.cli.demo import main

    assert main(["--output_dir", str(tmp_path), "--steps", "2", "--clips", "1", "--preset", "tiny-2.5"]) == 0
    out = capsys.readouterr().out
    assert "--audio_vae" in out and "model (release folder):" in out
    assert "--text_encoder " + str(tmp_path / "model" / "ltx-2.5-tiny" / "text_encoders" / "tiny-gemma4-with-proj.safetensors") in out
    assert json.loads((tmp_path / "data" / "cache" / "videos" / "ltxv2_text_encoder.json").read_text())["family"] == "gemma4"
    lora = tmp_path / "output" / "demo_lora.safetensors"
    with safe_open(str(lora), framework="pt") as f:
        meta = f.metadata()
    assert meta["base_model_version"] == "2.5.0" and meta["av_timestep_rule"] == "current"
    assert sorted((tmp_path / "output" / "samples").glob("*.mp4"))


def test_text_cache_of_another_gemma_family_fails_before_training(tmp_path):
    from ltxv2_diffusers.text.gemma import (
        check_text_cache_family,
        expected_gemma_family,
        text_encoder_family,
        write_text_cache_info,
    )
    from ltxv2_diffusers.text.tiny import write_tiny_gemma

    gemma3 = write_tiny_gemma(tmp_path / "g3")
    assert text_encoder_family(gemma3) == "gemma3"
    assert expected_gemma_family(preset_config("tiny-2.5")["transformer"]) == "gemma4"
    assert expected_gemma_family(preset_config("tiny-2.3")["transformer"]) == "gemma3"
    write_text_cache_info([tmp_path / "cache"], "gemma3", gemma3)
    check_text_cache_family([tmp_path / "cache"], preset_config("tiny-2.3")["transformer"], "m23")
    with pytest.raises(ValueError, match="made with gemma3.*expects gemma4"):
        check_text_cache_family([tmp_path / "cache"], preset_config("tiny-2.5")["transformer"], "m25")


def test_gemma_file_round_trip(tmp_path):
    """`write_gemma_file` writes the official single-file layout (Comfy keys) that `load_gemma_file` reads."""
    from transformers import AutoModel, AutoTokenizer

    from ltxv2_diffusers.text.gemma_file import load_gemma_file, write_gemma_file
    from ltxv2_diffusers.text.tiny import write_tiny_gemma4

    folder = write_tiny_gemma4(tmp_path / "g4")
    model, tokenizer = AutoModel.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    path = write_gemma_file(tmp_path / "te.safetensors", model, tokenizer,
                            extra={"text_embedding_projection.video_aggregate_embed.weight": torch.ones(2, 2)})
    keys = set(load_file(str(path)))
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "tokenizer_json" in keys
    back, back_tokenizer = load_gemma_file(path)
    _same_weights(back, model)
    assert back_tokenizer("a red car").input_ids == tokenizer("a red car").input_ids
