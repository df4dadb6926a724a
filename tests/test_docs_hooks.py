"""docs/plugins.md documents every hook with its exact signature and a working example."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from ltxv2_diffusers import hookspecs, plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HEADING = re.compile(r"^### (ltxv2_\w+)\((.*)\)\s*$", re.M)


def spec_signature(name: str) -> list[str]:
    return list(inspect.signature(getattr(hookspecs, name)).parameters)


def doc_sections() -> dict[str, tuple[list[str], str]]:
    """hook name -> (documented arguments, section text up to the next heading)."""
    text = DOC.read_text()
    matches = list(HEADING.finditer(text))
    sections = {}
    for m, nxt in zip(matches, [*matches[1:], None]):
        if nxt is not None:
            end = nxt.start()
        else:  # the last hook's section ends at the next level-2 heading, if any
            end = text.find("\n## ", m.end())
            end = len(text) if end < 0 else end
        args = [a.strip() for a in m.group(2).split(",") if a.strip()]
        assert m.group(1) not in sections, f"{m.group(1)} is documented twice"
        sections[m.group(1)] = (args, text[m.end():end])
    return sections


def test_every_hook_is_documented_with_its_signature():
    sections = doc_sections()
    hooks = plugins.hook_names()
    assert len(hooks) == 12
    missing = sorted(set(hooks) - set(sections))
    assert not missing, f"docs/plugins.md lacks a '### name(args)' section for {missing}"
    stale = sorted(set(sections) - set(hooks))
    assert not stale, f"docs/plugins.md documents hooks that do not exist: {stale}"
    for name in hooks:
        assert sections[name][0] == spec_signature(name), f"{name}: docs/plugins.md signature drifted from hookspecs.py"


@pytest.mark.parametrize("name", plugins.hook_names())
def test_hookspec_docstring_and_first_result_are_stated(name):
    spec = getattr(hookspecs, name)
    doc = inspect.getdoc(spec) or ""
    assert "Arguments:" in doc and "Returns:" in doc, f"{name} docstring must say its arguments and return value"
    firstresult = plugins.get_plugin_manager().hook.__dict__[name].spec.opts["firstresult"]
    states_first = "first non-none result wins" in " ".join(doc.lower().split())
    assert states_first == firstresult, f"{name}: docstring must say whether the first non-None result wins"
    section = " ".join(doc_sections()[name][1].lower().split())
    assert ("first non-none result wins" in section) == firstresult, f"docs/plugins.md {name}: same for the docs"


@pytest.mark.parametrize("name", plugins.hook_names())
def test_each_section_has_an_example_that_registers(name):
    section = doc_sections()[name][1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, f"docs/plugins.md {name} needs a ```python example"
    namespace = {"hookimpl": hookspecs.hookimpl}
    exec(compile(blocks[0], f"docs/plugins.md:{name}", "exec"), namespace)
    module = type(plugins)(f"doc_example_{name}")
    module.__dict__.update({k: v for k, v in namespace.items() if k.startswith("ltxv2_")})
    assert callable(getattr(module, name, None)), f"the {name} example must define {name}"
    plugins.register_plugin(module, name=f"doc_example_{name}")  # validates hook and argument names
    try:
        impl_args = inspect.signature(getattr(module, name)).parameters
        assert set(impl_args) <= set(spec_signature(name))
    finally:
        plugins.unregister_plugin(f"doc_example_{name}")
