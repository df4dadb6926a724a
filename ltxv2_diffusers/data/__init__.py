"""Data: dataset.toml, media decoding, log-mel, item listing, caching jobs, cache stores, batching.

The names below are imported on first use, so `import ltxv2_diffusers.data` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DatasetConfig": "config",
    "DatasetConfigError": "config",
    "DatasetEntry": "config",
    "load_dataset_config": "config",
    "Item": "items",
    "ListingResult": "items",
    "list_items": "items",
    "load_video_frames": "items",
    "load_audio": "items",
    "load_audio_waveform": "items",
    "MediaError": "media",
    "select_bucket": "media",
    "log_mel": "mel",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ltxv2_diffusers.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
