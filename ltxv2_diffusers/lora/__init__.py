"""LoRA for the LTX-2 transformer: targets per mode, PEFT adapters, and files in every layout users load.

This package is also what `--network_module ltxv2_diffusers.lora` names (musubi's
`musubi_tuner.networks.lora_ltxv2` is accepted as an alias, see `resolve_network_module`).

Trainer flow::

    targets = add_lora(transformer, mode, rank, alpha, target_options_from_network_args(args))
    ...train lora_parameters(transformer)...
    lora = lora_from_model(transformer, metadata=lora_metadata(mode=..., base_model=..., training_args=...))
    save_lora(lora, output_dir, output_name)          # official + diffusers files
    apply_lora(other_transformer, read_lora(path), strength=0.8)
"""

from .io import (
    FORMATS,
    LoraFormatError,
    detect_lora_format,
    lora_from_state_dict,
    lora_metadata,
    lora_parameter_count,
    lora_to_state_dict,
    read_lora,
    save_lora,
    write_lora,
)
from .keys import MusubiNameResolver, linear_module_names
from .network import (
    NETWORK_MODULE,
    NETWORK_MODULE_ALIASES,
    add_lora,
    apply_lora,
    check_lora_fits,
    lora_from_model,
    lora_parameters,
    remove_lora,
    resolve_network_module,
)
from .targets import DEFAULT_PROJECTIONS, TargetOptions, select_lora_targets, target_options_from_network_args
from .weights import LoraModuleWeights, LoraWeights, NonFiniteWeights

__all__ = [
    "DEFAULT_PROJECTIONS",
    "FORMATS",
    "LoraFormatError",
    "LoraModuleWeights",
    "LoraWeights",
    "MusubiNameResolver",
    "NETWORK_MODULE",
    "NETWORK_MODULE_ALIASES",
    "NonFiniteWeights",
    "TargetOptions",
    "add_lora",
    "apply_lora",
    "check_lora_fits",
    "detect_lora_format",
    "linear_module_names",
    "lora_from_model",
    "lora_from_state_dict",
    "lora_metadata",
    "lora_parameter_count",
    "lora_parameters",
    "lora_to_state_dict",
    "read_lora",
    "remove_lora",
    "resolve_network_module",
    "save_lora",
    "select_lora_targets",
    "target_options_from_network_args",
    "write_lora",
]
