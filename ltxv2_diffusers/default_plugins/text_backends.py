"""Built-in text encoder backends ``gemma`` and ``t5``, imported only when a backend is built."""

from __future__ import annotations

import importlib

from ltxv2_diffusers.hookspecs import hookimpl


class LazyFactory:
    """A factory that imports ``module:attr`` on first use, so registering it costs nothing."""

    def __init__(self, target: str):
        module, sep, attr = target.partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"LazyFactory target must look like 'package.module:Name', got {target!r}")
        self.target = target
        self._module, self._attr = module, attr

    def load(self):
        """Import and return the object the target names."""
        return getattr(importlib.import_module(self._module), self._attr)

    def __call__(self, *args, **kwargs):
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazyFactory({self.target!r})"


@hookimpl(trylast=True)
def ltxv2_register_text_encoder_backends(register):
    register("gemma", LazyFactory("ltxv2_diffusers.text.gemma:GemmaTextBackend"))
    register("t5", LazyFactory("ltxv2_diffusers.text.t5:T5TextBackend"))
