"""LoRA targets per mode, files in the three layouts, round trips, alpha/strength, errors, export CLI.

Everything runs on the real tiny LTX-2 transformer (`build_components("tiny")`) and real PEFT adapters.
"""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from ltxv2_diffusers.cli import export_lora
from ltxv2_diffusers.lora import (
    FORMATS,
    LoraFormatError,
    LoraModuleWeights,
    LoraWeights,
    MusubiNameResolver,
    TargetOptions,
    add_lora,
    apply_lora,
    linear_module_names,
    lora_from_model,
    lora_from_state_dict,
    lora_metadata,
    lora_parameters,
    lora_to_state_dict,
    read_lora,
    remove_lora,
    resolve_network_module,
    save_lora,
    select_lora_targets,
    target_options_from_network_args,
    write_lora,
)
from ltxv2_diffusers.models.presets import build_components

F, H, W, NA = 2, 2, 2, 5


def _transformer(seed: int = 0):
    return build_components("tiny", seed=seed, components=("transformer",))["transformer"]


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, F * H * W, 128, generator=g),
        audio_hidden_states=torch.randn(1, NA, 128, generator=g),
        encoder_hidden_states=torch.randn(1, 6, 24, generator=g),
        audio_encoder_hidden_states=torch.randn(1, 6, 24, generator=g),
        timestep=torch.tensor([500.0]),
        num_frames=F,
        height=H,
        width=W,
        fps=24.0,
        audio_num_frames=NA,
    )


@torch.no_grad()
def _forward(transformer, inputs, **kwargs):
    video, audio = transformer(**inputs, **kwargs, return_dict=False)
    return video, audio


def _random_lora(mode="av", rank=4, alpha=2.0, seed=1, options=None, metadata=None) -> LoraWeights:
    transformer = _transformer()
    add_lora(transformer, mode, rank, alpha, options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return lora_from_model(transformer, metadata=metadata)


# ----------------------------------------------------------------------------- targets


@pytest.fixture(scope="module")
def tiny():
    return _transformer()


def test_targets_per_mode(tiny):
    video = select_lora_targets(tiny, "video")
    audio = select_lora_targets(tiny, "audio")
    av = select_lora_targets(tiny, "av")
    assert len(video) == len(audio) == 2 * 2 * 4 and len(av) == 2 * 6 * 4
    assert all("audio" not in n for n in video)
    assert {n.split(".")[2] for n in video} == {"attn1", "attn2"}
    assert {n.split(".")[2] for n in audio} == {"audio_attn1", "audio_attn2"}
    assert {n.split(".")[2] for n in av} == {
        "attn1", "attn2", "audio_attn1", "audio_attn2", "audio_to_video_attn", "video_to_audio_attn"
    }
    assert {n.split(".", 3)[3] for n in av} == {"to_q", "to_k", "to_v", "to_out.0"}


def test_network_args_overrides(tiny):
    opts = target_options_from_network_args(
        ["include_ff=True", "exclude_patterns=['attn2']", "loraplus_lr_ratio=4", "target_modules=to_q,to_v"]
    )
    assert opts.extra == {"loraplus_lr_ratio": 4}
    names = select_lora_targets(tiny, "video", opts)
    assert names == [
        f"transformer_blocks.{i}.{m}" for i in (0, 1) for m in ("attn1.to_q", "attn1.to_v", "ff.net.0.proj", "ff.net.2")
    ]
    # Patterns also match official names (layer index 1 only); audio FF comes with include_ff in audio mode.
    opts = target_options_from_network_args({"include_patterns": r"transformer_blocks\.1\.", "include_ff": "true"})
    assert select_lora_targets(tiny, "audio", opts)[-2:] == [
        "transformer_blocks.1.audio_ff.net.0.proj", "transformer_blocks.1.audio_ff.net.2"
    ]
    assert all(n.startswith("transformer_blocks.1.") for n in select_lora_targets(tiny, "audio", opts))
    # Longer suffixes stay dot-bounded: `attn1.to_q` is not `audio_attn1.to_q`.
    opts = target_options_from_network_args(["target_modules=attn1.to_q,transformer_blocks.1.attn2.to_k"])
    assert select_lora_targets(tiny, "av", opts) == [
        "transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn1.to_q", "transformer_blocks.1.attn2.to_k"
    ]


def test_explicit_module_list(tiny):
    opts = TargetOptions(modules=("transformer_blocks.1.attn1.to_q", "transformer_blocks.0.ff.net.2"))
    assert select_lora_targets(tiny, "video", opts) == ["transformer_blocks.0.ff.net.2", "transformer_blocks.1.attn1.to_q"]
    # Official spelling is accepted for top-level modules (patchify_proj is diffusers' proj_in).
    assert select_lora_targets(tiny, "av", TargetOptions(modules=("patchify_proj",))) == ["proj_in"]
    with pytest.raises(ValueError, match="other modality"):
        select_lora_targets(tiny, "video", TargetOptions(modules=("transformer_blocks.0.video_to_audio_attn.to_q",)))
    with pytest.raises(ValueError, match="not a linear layer"):
        select_lora_targets(tiny, "av", TargetOptions(modules=("transformer_blocks.0.attn9.to_q",)))


def test_bad_target_options(tiny):
    with pytest.raises(ValueError, match="no LoRA targets"):
        select_lora_targets(tiny, "video", TargetOptions(projections=("to_qq",)))
    with pytest.raises(ValueError, match="not a valid regex"):
        select_lora_targets(tiny, "video", TargetOptions(exclude_patterns=("(",)))
    with pytest.raises(ValueError, match="expected key=value"):
        target_options_from_network_args(["include_ff"])
    with pytest.raises(ValueError, match="include_ff"):
        target_options_from_network_args(["include_ff=maybe"])


def test_network_module_resolver():
    assert resolve_network_module("ltxv2_diffusers.lora") == "ltxv2_diffusers.lora"
    assert resolve_network_module("musubi_tuner.networks.lora_ltxv2") == "ltxv2_diffusers.lora"
    with pytest.raises(ValueError, match="networks.lora_wan"):
        resolve_network_module("networks.lora_wan")


def test_add_lora_adapts_exactly_the_targets_and_trains_only_lora():
    transformer = _transformer()
    targets = add_lora(transformer, "video", rank=4, alpha=8)
    trainable = {n for n, p in transformer.named_parameters() if p.requires_grad}
    assert trainable == {f"{t}.lora_{ab}.default.weight" for t in targets for ab in "AB"}
    # PEFT suffix matching would also wrap audio_attn1.to_q etc.; full names must prevent that.
    assert not any("audio" in n for n in trainable)
    assert len(lora_parameters(transformer)) == 2 * len(targets)
    remove_lora(transformer)
    assert not any(".lora_" in n for n, _ in transformer.named_parameters())


# ----------------------------------------------------------------------------- modality isolation


def test_video_lora_leaves_audio_bit_identical(inputs):
    base = _transformer()
    ref_video, ref_audio = _forward(base, inputs, isolate_modalities=True)
    lora = _random_lora("video")

    adapted = _transformer()
    apply_lora(adapted, lora, fuse=False)
    video, audio = _forward(adapted, inputs, isolate_modalities=True)
    assert torch.equal(audio, ref_audio)
    assert not torch.allclose(video, ref_video, atol=1e-3)

    fused = _transformer()
    apply_lora(fused, lora, fuse=True)
    base_sd, fused_sd = base.state_dict(), fused.state_dict()
    changed = {k for k in base_sd if not torch.equal(base_sd[k], fused_sd[k])}
    assert changed and not any("audio" in k for k in changed)
    assert torch.equal(_forward(fused, inputs, isolate_modalities=True)[1], ref_audio)


def test_audio_lora_leaves_video_bit_identical(inputs):
    ref_video, ref_audio = _forward(_transformer(), inputs, isolate_modalities=True)
    adapted = _transformer()
    apply_lora(adapted, _random_lora("audio"), fuse=False)
    video, audio = _forward(adapted, inputs, isolate_modalities=True)
    assert torch.equal(video, ref_video)
    assert not torch.allclose(audio, ref_audio, atol=1e-3)


# ----------------------------------------------------------------------------- formats


@pytest.fixture(scope="module")
def lora():
    meta = lora_metadata(mode="av", base_model="tiny", training_args={"network_dim": 4, "lr": 1e-4}, rank=4, alpha=3.0)
    # alpha/rank = 0.75 is not a power of two: folding into lora_B rounds, which the tests must tolerate.
    return _random_lora("av", rank=4, alpha=3.0, metadata=meta)


def _assert_same(a: LoraWeights, b: LoraWeights, exact_tensors=True, rtol=1e-6, atol=1e-7):
    assert list(a.modules) == list(b.modules)
    for name in a.modules:
        ma, mb = a.modules[name], b.modules[name]
        if exact_tensors:
            assert torch.equal(ma.down, mb.down) and torch.equal(ma.up, mb.up) and ma.alpha == mb.alpha, name
        torch.testing.assert_close(ma.delta(0.7), mb.delta(0.7), rtol=rtol, atol=atol)


def test_file_layouts_and_metadata(lora, tmp_path):
    official, diffusers_file = save_lora(lora, tmp_path, "my_lora")
    assert official == tmp_path / "my_lora.safetensors"
    assert diffusers_file == tmp_path / "my_lora-diffusers" / "pytorch_lora_weights.safetensors"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["my_lora-diffusers", "my_lora.safetensors", "pytorch_lora_weights.safetensors"]

    name = "transformer_blocks.1.audio_to_video_attn.to_out.0"
    m = lora.modules[name]
    with safetensors.safe_open(str(official), "pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {f"diffusion_model.{n}.lora_{ab}.weight" for n in lora.modules for ab in "AB"}
        assert torch.equal(f.get_tensor(f"diffusion_model.{name}.lora_A.weight"), m.down)
        assert torch.equal(f.get_tensor(f"diffusion_model.{name}.lora_B.weight"), m.up * 0.75)
    assert meta["rank"] == "4" and meta["alpha"] == "3.0" and meta["ltx_mode"] == "av" and meta["alpha_folded"] == "true"
    assert meta["base_model"] == "tiny" and json.loads(meta["training_args"]) == {"lr": 1e-4, "network_dim": 4}

    with safetensors.safe_open(str(diffusers_file), "pt") as f:
        meta = f.metadata()
        assert torch.equal(f.get_tensor(f"transformer.{name}.lora_B.weight"), m.up)
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.r"] == 4 and config["transformer.lora_alpha"] == 3.0
    assert sorted(config["transformer.target_modules"]) == sorted(lora.modules)

    musubi = write_lora(lora, tmp_path / "m.safetensors", "musubi")
    sd = safetensors.torch.load_file(musubi)
    key = "lora_unet_model_transformer_blocks_1_audio_to_video_attn_to_out_0"
    assert torch.equal(sd[f"{key}.lora_up.weight"], m.up) and sd[f"{key}.alpha"].item() == 3.0

    for path, fmt in ((official, "official"), (tmp_path / "my_lora-diffusers", "diffusers"), (musubi, "musubi")):
        back = read_lora(path)
        assert back.source_format == fmt
        assert back.metadata["ltx_mode"] == "av" and back.metadata["alpha"] == "3.0"
        _assert_same(lora, back, exact_tensors=fmt != "official")


def test_round_trips_between_formats(lora):
    """diffusers <-> musubi keep every tensor and alpha; official (alpha folded) round-trips itself exactly."""

    def convert(weights, fmt):
        sd, meta = lora_to_state_dict(weights, fmt)
        return lora_from_state_dict(sd, meta)

    via_musubi = convert(convert(convert(lora, "musubi"), "diffusers"), "musubi")
    _assert_same(lora, via_musubi)
    assert via_musubi.metadata == convert(lora, "diffusers").metadata

    official = convert(lora, "official")
    _assert_same(lora, official, exact_tensors=False)  # folding alpha/rank = 0.75 rounds lora_B once
    for other in ("diffusers", "musubi"):
        again = convert(convert(official, other), "official")
        _assert_same(official, again)
        assert again.metadata == official.metadata

    # With alpha/rank a power of two, folding is exact and every route returns the same tensors.
    pow2 = LoraWeights({n: LoraModuleWeights(m.down, m.up, 8.0) for n, m in lora.modules.items()}, {}, None)
    unfolded = convert(convert(pow2, "official"), "diffusers")
    for name, m in pow2.modules.items():
        assert torch.equal(unfolded.modules[name].up, m.up * 2) and unfolded.modules[name].alpha == m.rank


def test_per_module_rank_and_alpha_survive_diffusers_and_musubi(lora):
    modules = dict(lora.modules)
    odd = "transformer_blocks.0.attn1.to_k"
    modules[odd] = LoraModuleWeights(torch.randn(2, 32), torch.randn(32, 2), 5.0)
    mixed = LoraWeights(modules, {}, None)
    for fmt in ("diffusers", "musubi"):
        back = lora_from_state_dict(*lora_to_state_dict(mixed, fmt))
        assert back.modules[odd].rank == 2 and back.modules[odd].alpha == 5.0
        assert back.modules["transformer_blocks.0.attn1.to_q"].alpha == 3.0
    sd, meta = lora_to_state_dict(mixed, "diffusers")
    config = json.loads(meta["lora_adapter_metadata"])
    assert config["transformer.rank_pattern"] == {odd: 2} and config["transformer.alpha_pattern"] == {odd: 5.0}


def test_strength_and_alpha_applied_right_in_every_format(lora, tmp_path, inputs):
    """Fusing at strength s adds s * alpha/rank * B @ A, whatever layout the file has."""
    name = "transformer_blocks.0.video_to_audio_attn.to_v"
    m = lora.modules[name]
    expected = 0.5 * (3.0 / 4) * (m.up.double() @ m.down.double())
    base_weight = _transformer().get_submodule(name).weight.detach().clone()
    for fmt in FORMATS:
        path = write_lora(lora, tmp_path / f"{fmt}.safetensors", fmt)
        fused = _transformer()
        apply_lora(fused, read_lora(path), strength=0.5)
        delta = fused.get_submodule(name).weight.double() - base_weight.double()
        torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)


def test_reads_what_diffusers_itself_saves(tmp_path):
    """`LTX2Pipeline.save_lora_weights` output (PEFT config as metadata) reads back with the right alpha."""
    from diffusers import LTX2Pipeline
    from peft.utils import get_peft_model_state_dict

    transformer = _transformer()
    add_lora(transformer, "video", rank=4, alpha=2.0)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.normal_()
    expected = lora_from_model(transformer)
    LTX2Pipeline.save_lora_weights(
        tmp_path,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    back = read_lora(tmp_path)
    assert back.source_format == "diffusers"
    _assert_same(expected, back)
    # Without metadata diffusers applies scale 1 (alpha == rank); so do we.
    sd, _ = lora_to_state_dict(expected, "diffusers")
    assert lora_from_state_dict(sd, {}).alphas == {4.0}


def test_comfy_files_with_alpha_keys(lora):
    """Official-prefix files that carry kohya-style `.alpha` keys (some ComfyUI exports) scale by alpha/rank."""
    sd = {}
    for name, m in lora.modules.items():
        key = "diffusion_model." + name  # attention/FF names are the same in both spellings
        sd.update({f"{key}.lora_A.weight": m.down, f"{key}.lora_B.weight": m.up, f"{key}.alpha": torch.tensor(3.0)})
    _assert_same(lora, lora_from_state_dict(sd))


def test_musubi_names_with_and_without_wrapper_prefix(lora):
    sd, meta = lora_to_state_dict(lora, "musubi")
    bare = {k.replace("lora_unet_model_", "lora_unet_"): v for k, v in sd.items()}
    back = lora_from_state_dict(bare, meta)
    _assert_same(lora, back)
    resolver = MusubiNameResolver(linear_module_names(_transformer()))
    assert resolver.resolve("lora_unet_adaln_single_emb_timestep_embedder_linear_1") == "time_embed.emb.timestep_embedder.linear_1"
    assert resolver.resolve("lora_unet_model_transformer_blocks_0_attn1_to_out_0") == "transformer_blocks.0.attn1.to_out.0"
    assert resolver.resolve("lora_unet_model_transformer_blocks_0_attn3_to_q") is None


def test_dtype_on_write(lora, tmp_path):
    path = write_lora(lora, tmp_path / "bf16.safetensors", "official", dtype=torch.bfloat16)
    back = read_lora(path)
    assert {m.down.dtype for m in back.modules.values()} == {torch.bfloat16}
    # bf16 keeps 8 bits of mantissa; folding alpha/rank rounds lora_B once more.
    _assert_same(lora, back.to(torch.float32), exact_tensors=False, rtol=2e-2, atol=2e-3)


# ----------------------------------------------------------------------------- bad input


def test_bad_files_give_clear_errors(lora, tmp_path):
    model_file = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"model.diffusion_model.proj_out.weight": torch.zeros(2, 2)}, model_file)
    with pytest.raises(LoraFormatError, match=r"model\.safetensors: not an LTX-2 transformer LoRA.*lora_A"):
        read_lora(model_file)

    text_file = tmp_path / "notes.safetensors"
    text_file.write_text("hello")
    with pytest.raises(LoraFormatError, match="notes.safetensors: not a readable safetensors file"):
        read_lora(text_file)
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        read_lora(tmp_path / "missing.safetensors")

    sd, meta = lora_to_state_dict(lora, "official")
    unknown = dict(sd, **{"diffusion_model.transformer_blocks.0.attn7.to_q.lora_A.weight": torch.zeros(4, 32),
                          "diffusion_model.transformer_blocks.0.attn7.to_q.lora_B.weight": torch.zeros(32, 4)})
    with pytest.raises(LoraFormatError, match=r"does not have.*attn7"):
        lora_from_state_dict(unknown, meta)
    half = {k: v for k, v in sd.items() if not k.endswith("attn1.to_q.lora_B.weight")}
    with pytest.raises(LoraFormatError, match=r"attn1\.to_q' has no lora_B"):
        lora_from_state_dict(half, meta)
    mixed = dict(sd, **{"lora_unet_model_proj_out.lora_down.weight": torch.zeros(4, 32)})
    with pytest.raises(LoraFormatError, match="mixes LoRA layouts"):
        lora_from_state_dict(mixed, meta)
    lokr = {"lora_unet_model_proj_out.lokr_w1": torch.zeros(2, 2)}
    with pytest.raises(LoraFormatError, match="LoKr"):
        lora_from_state_dict(lokr)
    musubi_sd, _ = lora_to_state_dict(lora, "musubi")
    musubi_sd["lora_unet_model_transformer_blocks_0_attn9_to_q.lora_down.weight"] = torch.zeros(4, 32)
    musubi_sd["lora_unet_model_transformer_blocks_0_attn9_to_q.lora_up.weight"] = torch.zeros(32, 4)
    with pytest.raises(LoraFormatError, match="attn9"):
        lora_from_state_dict(musubi_sd)


def test_lora_for_another_model_size_is_refused(lora):
    name = "transformer_blocks.0.attn1.to_q"
    modules = dict(lora.modules)
    modules[name] = LoraModuleWeights(torch.zeros(4, 64), torch.zeros(64, 4), 4.0)  # made for a 64-wide model
    transformer = _transformer()
    before = transformer.state_dict()
    with pytest.raises(LoraFormatError, match=r"attn1\.to_q: LoRA maps 64->64, layer is 32->32"):
        apply_lora(transformer, LoraWeights(modules, {}, None))
    after = transformer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing half-applied
    with pytest.raises(LoraFormatError, match="does not have"):
        apply_lora(transformer, LoraWeights({"transformer_blocks.5.attn1.to_q": lora.modules[name]}, {}, None))


# ----------------------------------------------------------------------------- CLI


def test_export_cli_chain(lora, tmp_path, capsys):
    official, _ = save_lora(lora, tmp_path, "run")
    musubi = tmp_path / "run_musubi.safetensors"
    assert export_lora.main(["--input", str(official), "--format", "musubi", "--output", str(musubi)]) == 0
    assert "(official, 48 modules, rank 4, alpha 4) ->" in capsys.readouterr().out
    out_dir = tmp_path / "as_diffusers"
    out_dir.mkdir()
    assert export_lora.main(["--input", str(musubi), "--format", "diffusers", "--output", str(out_dir)]) == 0
    back = tmp_path / "back.safetensors"
    assert export_lora.main(["--input", str(out_dir), "--format", "official", "--output", str(back)]) == 0
    a, b = safetensors.torch.load_file(official), safetensors.torch.load_file(back)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_lora(back).metadata["alpha"] == "3.0"  # the trained alpha survives the chain as metadata

    assert export_lora.main(["--input", str(tmp_path / "nope.safetensors"), "--format", "official", "--output", str(back)]) == 2
    assert "nope.safetensors does not exist" in capsys.readouterr().err
