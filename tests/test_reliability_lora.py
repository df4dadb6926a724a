"""Reliability of LoRA files (case 10 of docs/reliability.md): a LoRA holding NaN/inf, or an alpha that is not a
finite number, is refused with one line naming the file; nothing is written from it."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from ltxv2_diffusers.cli import export_lora
from ltxv2_diffusers.lora import (
    NonFiniteWeights, add_lora, lora_from_model, lora_to_state_dict, read_lora, save_lora, write_lora,
)
from ltxv2_diffusers.models.presets import build_components


@pytest.fixture(scope="module")
def lora():
    transformer = build_components("tiny", seed=0, components=["transformer"])["transformer"]
    add_lora(transformer, "video", 4, 4.0)
    with torch.no_grad():
        for p in transformer.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape) * 0.1)
    return lora_from_model(transformer)


def _musubi_with(lora, path, alpha):
    tensors, meta = lora_to_state_dict(lora, "musubi")
    key = next(k for k in tensors if k.endswith(".alpha"))
    tensors[key] = torch.tensor(alpha)
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_export_refuses_nonfinite_alpha(lora, tmp_path, capsys, alpha):
    bad, out = tmp_path / "bad.safetensors", tmp_path / "out.safetensors"
    _musubi_with(lora, bad, alpha)
    assert export_lora.main(["--input", str(bad), "--format", "official", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"ltxv2-export-lora: error: {bad}: LoRA module" in err and f"alpha is {alpha}" in err
    assert "Traceback" not in err and not out.exists()


def test_export_refuses_a_string_alpha_in_diffusers_metadata(lora, tmp_path, capsys):
    tensors, meta = lora_to_state_dict(lora, "diffusers")
    config = json.loads(meta["lora_adapter_metadata"])
    config["transformer.lora_alpha"] = "sixteen"
    meta["lora_adapter_metadata"] = json.dumps(config)
    bad, out = tmp_path / "bad.safetensors", tmp_path / "out.safetensors"
    safetensors.torch.save_file(tensors, str(bad), metadata=meta)
    assert export_lora.main(["--input", str(bad), "--format", "musubi", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "alpha 'sixteen'" in err and "must be numbers" in err and not out.exists()


def test_nan_weights_are_neither_read_nor_written(lora, tmp_path):
    tensors, meta = lora_to_state_dict(lora, "official")
    key = next(iter(tensors))
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(tensors, str(bad), metadata=meta)
    with pytest.raises(NonFiniteWeights, match=f"{bad}: 1 of {len(lora.modules)} LoRA modules hold NaN/inf"):
        read_lora(bad)
    name = next(iter(lora.modules))
    broken = type(lora)({**lora.modules}, dict(lora.metadata))
    broken.modules[name] = type(lora.modules[name])(lora.modules[name].down * float("inf"), lora.modules[name].up, 4.0)
    with pytest.raises(NonFiniteWeights, match="not writing"):
        save_lora(broken, tmp_path, "run")
    assert not (tmp_path / "run.safetensors").exists() and not list(tmp_path.rglob("*.tmp"))


def test_export_refuses_a_dtype_that_overflows(lora, tmp_path, capsys):
    big = type(lora)({n: type(m)(m.down * 1e6, m.up, m.alpha) for n, m in lora.modules.items()}, {})
    src, out = tmp_path / "big.safetensors", tmp_path / "out.safetensors"
    write_lora(big, src, "musubi")
    assert export_lora.main(["--input", str(src), "--format", "musubi", "--output", str(out), "--dtype", "fp16"]) == 2
    assert "overflow --dtype" in capsys.readouterr().err and not out.exists()
