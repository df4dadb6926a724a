"""A saved LoRA gives the same model whoever loads it: ltx-core, diffusers' LTX2Pipeline, our loader.

- ltx-core: `SingleGPUModelBuilder(...).lora(file, strength, LTXV_LORA_COMFY_RENAMING_MAP).build()` on an
  official checkpoint of a bf16 base (its fuser refuses fp32 bases), fused in fp32. Our fused loader
  must give bit-identical weights and outputs from all three layouts. LTX-2.0 and 2.3 layouts.
- diffusers: `LTX2Pipeline.load_lora_weights` (PEFT, unfused) on the official file and on the
  diffusers folder, at full and at reduced adapter weight, against our unfused and fused loaders.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ltx_core")

from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline  # noqa: E402
from ltx_core.loader import SingleGPUModelBuilder  # noqa: E402
from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP  # noqa: E402
from ltx_core.model.transformer.model_configurator import (  # noqa: E402
    LTXV_MODEL_COMFY_RENAMING_MAP,
    LTXModelConfigurator,
)

from ltxv2_diffusers.lora import (  # noqa: E402
    TargetOptions,
    add_lora,
    apply_lora,
    lora_from_model,
    lora_metadata,
    lora_parameters,
    read_lora,
    save_lora,
    write_lora,
)
from ltxv2_diffusers.models.adapter import context_widths  # noqa: E402
from ltxv2_diffusers.models.keymap import transformer_key_from_official  # noqa: E402
from ltxv2_diffusers.models.loading import save_official_checkpoint  # noqa: E402
from ltxv2_diffusers.models.presets import build_components  # noqa: E402

F, H, W, NA = 2, 2, 2, 5



STRENGTH = 0.8


@pytest.fixture(scope="module", params=["tiny", "tiny-2.3"])
def base(request, tmp_path_factory):
    """(preset, bf16 official checkpoint of a tiny transformer, its weights as fp32)."""
    transformer = build_components(request.param, seed=5, components=("transformer",))["transformer"]
    transformer = transformer.to(torch.bfloat16)
    checkpoint = tmp_path_factory.mktemp("base") / "base.safetensors"
    save_official_checkpoint(checkpoint, transformer=transformer)
    return request.param, checkpoint, {k: v.float() for k, v in transformer.state_dict().items()}


def _fp32_model(base):
    preset, _, state = base
    transformer = build_components(preset, seed=5, components=("transformer",))["transformer"]
    transformer.load_state_dict(state, strict=True)
    return transformer


@pytest.fixture(scope="module")
def inputs(base):
    video_width, audio_width = context_widths(_fp32_model(base).config)
    g = torch.Generator().manual_seed(2)
    return dict(
        hidden_states=torch.randn(1, F * H * W, 128, generator=g),
        audio_hidden_states=torch.randn(1, NA, 128, generator=g),
        encoder_hidden_states=torch.randn(1, 6, video_width, generator=g),
        audio_encoder_hidden_states=torch.randn(1, 6, audio_width, generator=g),
        timestep=torch.tensor([700.0]),
        sigma=torch.tensor([700.0]),  # LTX-2.3 prompt modulation reads it
        audio_sigma=torch.tensor([700.0]),
        num_frames=F,
        height=H,
        width=W,
        fps=24.0,
        audio_num_frames=NA,
    )


@torch.no_grad()
def _forward(transformer, inputs):
    return torch.cat([o.flatten() for o in transformer(**inputs, return_dict=False)])


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    """An av LoRA with FF layers (2.3: also the attention gates), rank 4, alpha 3 (scale 0.75), in all layouts."""
    transformer = _fp32_model(base)
    projections = ("to_q", "to_k", "to_v", "to_out.0") + (("to_gate_logits",) if base[0] == "tiny-2.3" else ())
    add_lora(transformer, "av", rank=4, alpha=3.0, options=TargetOptions(projections=projections, include_ff=True))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    lora = lora_from_model(transformer, metadata=lora_metadata(mode="av", base_model="tiny"))
    out = tmp_path_factory.mktemp("lora")
    official, diffusers_file = save_lora(lora, out, "parity")
    musubi = write_lora(lora, out / "parity_musubi.safetensors", "musubi")
    return {"official": official, "diffusers": diffusers_file.parent, "musubi": musubi, "lora": lora}


def _ltx_core_fused(base, official_lora, strength):
    """ltx-core's model builder with its LoRA loader and fuser; weights returned under diffusers names."""
    _, checkpoint, _ = base
    builder = SingleGPUModelBuilder(
        model_class_configurator=LTXModelConfigurator,
        model_path=str(checkpoint),
        model_sd_ops=LTXV_MODEL_COMFY_RENAMING_MAP,
    ).lora(str(official_lora), strength, LTXV_LORA_COMFY_RENAMING_MAP)
    model = builder.build(device=torch.device("cpu"), dtype=torch.float32)
    return {transformer_key_from_official(k): v for k, v in model.state_dict().items()}


def test_ltx_core_loader_matches_our_loader_bit_exactly(base, files, inputs):
    reference = _ltx_core_fused(base, files["official"], STRENGTH)
    original = base[2]
    assert set(reference) == set(original)
    changed = {k for k in original if not torch.equal(original[k], reference[k])}
    # ltx-core silently skips LoRA keys it cannot place; every module must have landed.
    assert changed == {f"{n}.weight" for n in files["lora"].modules}
    if base[0] == "tiny-2.3":
        assert any("to_gate_logits" in n for n in files["lora"].modules)

    ltx_model = _fp32_model(base)
    ltx_model.load_state_dict(reference, strict=True)
    expected = _forward(ltx_model, inputs)
    assert not torch.allclose(expected, _forward(_fp32_model(base), inputs), atol=1e-3)

    for fmt in ("official", "diffusers", "musubi"):
        ours = _fp32_model(base)
        apply_lora(ours, read_lora(files[fmt]), strength=STRENGTH, fuse=True)
        state = ours.state_dict()
        assert all(torch.equal(state[k], reference[k]) for k in reference), fmt
        assert torch.equal(_forward(ours, inputs), expected), fmt


def test_ltx2_pipeline_load_lora_weights_matches_our_loader(base, files, inputs):
    components = build_components(base[0], seed=5)
    components["transformer"] = _fp32_model(base)
    pipe = LTX2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=None, tokenizer=None, **components
    )
    ours = _fp32_model(base)
    apply_lora(ours, read_lora(files["diffusers"]), fuse=False, adapter_name="ours")
    fused = _fp32_model(base)
    apply_lora(fused, read_lora(files["official"]), strength=1.0, fuse=True)

    pipe.load_lora_weights(str(files["official"]), adapter_name="official")
    from_official = _forward(pipe.transformer, inputs)
    pipe.transformer.delete_adapters("official")
    pipe.load_lora_weights(str(files["diffusers"]), adapter_name="diffusers")
    from_diffusers = _forward(pipe.transformer, inputs)
    ours_out = _forward(ours, inputs)

    # Same PEFT computation, alpha from metadata vs folded into lora_B: equal to rounding of the fold.
    torch.testing.assert_close(from_diffusers, ours_out, rtol=0, atol=0)
    torch.testing.assert_close(from_official, ours_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(_forward(fused, inputs), ours_out, rtol=1e-5, atol=1e-6)

    # Strength: diffusers' adapter weight and ours scale the same way.
    pipe.set_adapters(["diffusers"], [0.3])
    for layer in ours.modules():
        if hasattr(layer, "set_scale"):
            layer.set_scale("ours", 0.3)
    torch.testing.assert_close(_forward(pipe.transformer, inputs), _forward(ours, inputs), rtol=0, atol=0)
    weak = _fp32_model(base)
    apply_lora(weak, read_lora(files["musubi"]), strength=0.3, fuse=True)
    torch.testing.assert_close(_forward(weak, inputs), _forward(ours, inputs), rtol=1e-5, atol=1e-6)
