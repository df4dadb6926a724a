"""ltxv2-diffusers: LoRA training for Lightricks LTX-2 on Hugging Face diffusers.

Public API is imported lazily so `import ltxv2_diffusers` stays cheap (CLI start-up, plugin discovery).

This package is also a library diffusers loads pipeline components from: our components
(scheduler, connectors, adapters) name `ltxv2_diffusers` as their module (`DIFFUSERS_COMPONENTS`),
so a saved pipeline's `model_index.json` lists them as `["ltxv2_diffusers", "<class>"]` whatever
file defines them, and diffusers finds each one and its base class (`ModelMixin` /
`SchedulerMixin`) here. diffusers imports no library a folder names: `import ltxv2_diffusers` first.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "hookimpl": "ltxv2_diffusers.hookspecs",
    "hookspec": "ltxv2_diffusers.hookspecs",
    "PluginError": "ltxv2_diffusers.plugins",
    "get_plugin_manager": "ltxv2_diffusers.plugins",
    "LtxMode": "ltxv2_diffusers.modes",
    "resolve_mode": "ltxv2_diffusers.modes",
    "TimestepFormat": "ltxv2_diffusers.timesteps",
    "timesteps_to_sigmas": "ltxv2_diffusers.timesteps",
    "sigmas_to_timesteps": "ltxv2_diffusers.timesteps",
    "build_components": "ltxv2_diffusers.models.presets",
    "load_components": "ltxv2_diffusers.models.loading",
    "load_transformer": "ltxv2_diffusers.models.loading",
    "save_official_checkpoint": "ltxv2_diffusers.models.loading",
    "CheckpointKeyError": "ltxv2_diffusers.models.loading",
    "LTXV2ModelAdapter": "ltxv2_diffusers.models.adapter",
    "LTXAVModelAdapter": "ltxv2_diffusers.models.adapter",
    "LTXAudioModelAdapter": "ltxv2_diffusers.models.adapter",
    "ModalityOutput": "ltxv2_diffusers.models.adapter",
    "adapter_class_for_mode": "ltxv2_diffusers.models.adapter",
    "LTXV2FlowMatchScheduler": "ltxv2_diffusers.models.scheduler",
    "CachedContextConnectors": "ltxv2_diffusers.training.previews",
    "add_lora": "ltxv2_diffusers.lora",
    "apply_lora": "ltxv2_diffusers.lora",
    "read_lora": "ltxv2_diffusers.lora",
    "save_lora": "ltxv2_diffusers.lora",
    "write_lora": "ltxv2_diffusers.lora",
    "lora_from_model": "ltxv2_diffusers.lora",
    "lora_metadata": "ltxv2_diffusers.lora",
    "LoraWeights": "ltxv2_diffusers.lora",
    "TargetOptions": "ltxv2_diffusers.lora",
    "select_lora_targets": "ltxv2_diffusers.lora",
    "resolve_network_module": "ltxv2_diffusers.lora",
    "LoraFormatError": "ltxv2_diffusers.lora",
    "load_dataset_config": "ltxv2_diffusers.data.config",
    "DatasetConfig": "ltxv2_diffusers.data.config",
    "list_items": "ltxv2_diffusers.data.items",
    "Item": "ltxv2_diffusers.data.items",
    "log_mel": "ltxv2_diffusers.data.mel",
    "BatchManager": "ltxv2_diffusers.data.batching",
    "CacheSource": "ltxv2_diffusers.data.batching",
    "CacheStore": "ltxv2_diffusers.data.stores",
    "run_cache_job": "ltxv2_diffusers.data.jobs",
    "VideoLatentEncoder": "ltxv2_diffusers.data.encoders",
    "AudioLatentEncoder": "ltxv2_diffusers.data.encoders",
    "TextEmbeddingEncoder": "ltxv2_diffusers.data.encoders",
    "get_text_backend": "ltxv2_diffusers.text.base",
    "GemmaTextBackend": "ltxv2_diffusers.text.gemma",
    "T5TextBackend": "ltxv2_diffusers.text.t5",
    "write_tiny_gemma": "ltxv2_diffusers.text.tiny",
    "write_tiny_t5": "ltxv2_diffusers.text.tiny",
    "TrainStep": "ltxv2_diffusers.training.step",
    "Trainer": "ltxv2_diffusers.training.trainer",
    "TrainingDiverged": "ltxv2_diffusers.training.trainer",
    "TrainingFailed": "ltxv2_diffusers.training.trainer",
    "TrainingOutOfMemory": "ltxv2_diffusers.training.trainer",
}

__all__ = ["__version__", *_EXPORTS]

DIFFUSERS_COMPONENTS = ("LTXV2FlowMatchScheduler", "CachedContextConnectors", "LTXV2ModelAdapter",
                        "LTXAVModelAdapter", "LTXAudioModelAdapter")
# diffusers' loader looks a component's base classes up in the library it comes from.
_DIFFUSERS_BASES = {"ModelMixin": "diffusers", "SchedulerMixin": "diffusers"}


def diffusers_component(cls: type) -> type:
    """Class decorator: diffusers records (and finds) `cls` under this package's name."""
    assert cls.__name__ in DIFFUSERS_COMPONENTS, f"add {cls.__name__} to DIFFUSERS_COMPONENTS"
    cls.__module__ = __name__
    return cls


def __getattr__(name: str):
    module = _EXPORTS.get(name) or _DIFFUSERS_BASES.get(name)
    if module is None:
        raise AttributeError(f"module 'ltxv2_diffusers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
