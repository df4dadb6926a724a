"""ltxv2-diffusers: LoRA training for Lightricks LTX-2 on Hugging Face diffusers.

Public API is imported lazily so `import ltxv2_diffusers` stays cheap (CLI start-up, plugin discovery).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "LtxMode": "ltxv2_diffusers.modes",
    "resolve_mode": "ltxv2_diffusers.modes",
    "TimestepFormat": "ltxv2_diffusers.timesteps",
    "timesteps_to_sigmas": "ltxv2_diffusers.timesteps",
    "build_components": "ltxv2_diffusers.models.presets",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ltxv2_diffusers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
