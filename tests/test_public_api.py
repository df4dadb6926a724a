"""The package's top-level names resolve lazily, and importing the package stays light."""

import subprocess
import sys

import ltxv2_diffusers


def test_every_exported_name_resolves():
    for name in ltxv2_diffusers.__all__:
        assert getattr(ltxv2_diffusers, name) is not None, name


def test_import_is_lazy():
    code = "import sys, ltxv2_diffusers; print('diffusers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_unknown_name_is_an_attribute_error():
    try:
        ltxv2_diffusers.not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
