"""Our musubi-format LoRA export loads in musubi-tuner's LTX-2 generator and merger: the metadata they read
(`ss_network_module`, which they import) and every module matched by musubi's naming rule.

musubi names a LoRA module `lora_unet_` + the module path inside its training wrapper (`.model` = the
official `LTXModel`), dots flattened to `_`, for every `Linear` inside a `BasicAVTransformerBlock`
(`networks/lora.py` `create_modules`); its generator imports `ss_network_module` (`ltx2_lora_utils.py`).
The rule is applied here to the official reference model (`ltx-core`) at tiny size. When musubi-tuner's
own source is importable (`PYTHONPATH=<musubi-tuner>/src`), its loader is run on the file as well.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

pytest.importorskip("ltx_core")

from ltx_core.model.transformer.model_configurator import LTXModelConfigurator  # noqa: E402

from ltxv2_diffusers.lora import (  # noqa: E402
    TargetOptions, add_lora, lora_from_model, lora_metadata, lora_parameters, write_lora,
)
from ltxv2_diffusers.models.keymap import transformer_key_to_official  # noqa: E402
from ltxv2_diffusers.models.official_config import transformer_config_to_official  # noqa: E402
from ltxv2_diffusers.models.presets import build_components  # noqa: E402

# musubi's ltx2_lora_utils.import_lora_network_module: the names it maps to its LTX-2 LoRA module
# without importing anything else.
MUSUBI_LTX2_MODULE_NAMES = {"lora_ltx2", "networks.lora_ltx2", "musubi_tuner.networks.lora_ltx2"}


class MusubiWrapper(torch.nn.Module):
    """The module tree musubi trains and merges into: the official model under `.model`."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def _official(transformer) -> MusubiWrapper:
    model = LTXModelConfigurator.from_config({"transformer": transformer_config_to_official(transformer.config)})
    state = {transformer_key_to_official(k): v for k, v in transformer.state_dict().items()}
    model.load_state_dict(state, strict=True, assign=True)
    return MusubiWrapper(model.eval())


def musubi_lora_names(unet: torch.nn.Module) -> set[str]:
    names = set()
    for name, module in unet.named_modules():
        if type(module).__name__ == "BasicAVTransformerBlock":
            for child, sub in module.named_modules():
                if type(sub).__name__ == "Linear":
                    names.add(f"lora_unet.{name}.{child}".replace(".", "_"))
    return names


@pytest.fixture(scope="module", params=["tiny", "tiny-2.3"])
def exported(request, tmp_path_factory):
    transformer = build_components(request.param, seed=5, components=("transformer",))["transformer"]
    projections = ("to_q", "to_k", "to_v", "to_out.0") + (("to_gate_logits",) if request.param == "tiny-2.3" else ())
    unet = _official(transformer)  # the base weights, before the LoRA wraps the layers
    add_lora(transformer, "av", rank=4, alpha=3.0, options=TargetOptions(projections=projections, include_ff=True))
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in lora_parameters(transformer):
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    lora = lora_from_model(transformer, metadata=lora_metadata(mode="av", base_model=request.param))
    path = write_lora(lora, tmp_path_factory.mktemp("lora") / "musubi.safetensors", "musubi")
    return path, lora, unet


def test_metadata_names_musubis_module(exported):
    path, lora, _ = exported
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_module"] in MUSUBI_LTX2_MODULE_NAMES
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "3.0")


def test_every_module_matches_musubis_names(exported):
    path, lora, unet = exported
    sd = load_file(str(path))
    prefixes = {k.split(".")[0] for k in sd}
    assert len(prefixes) == len(lora.modules)
    known = musubi_lora_names(unet)
    assert prefixes <= known, sorted(prefixes - known)[:5]
    for prefix in prefixes:  # the three tensors musubi's create_network_from_weights reads per module
        assert {f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= set(sd)


def test_musubis_own_loader_matches_and_merges_every_module(exported):
    """Runs only where musubi-tuner's source is importable (not in CI: its licence keeps it out of the project)."""
    lora_utils = pytest.importorskip("musubi_tuner.ltx2_lora_utils")
    path, lora, unet = exported
    unet = _official_copy(unet)
    sd = load_file(str(path))
    module = lora_utils.import_lora_network_module(lora_utils.infer_lora_network_module(
        lora_utils.load_lora_metadata(str(path)), sd))
    net = module.create_arch_network_from_weights(1.0, sd, unet=unet, for_inference=True)
    assert lora_utils.lora_module_count(net) == len(lora.modules)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    lora_utils.apply_lora_network_for_inference(net, unet, sd, merge_device=torch.device("cpu"), prefer_merge=True)
    after = unet.state_dict()
    for name, m in lora.modules.items():
        key = f"model.{transformer_key_to_official(name)}.weight"
        torch.testing.assert_close(after[key] - before[key], m.delta(), rtol=1e-4, atol=1e-5)


def _official_copy(unet):
    import copy

    return copy.deepcopy(unet)
