"""Attach, extract and apply LoRAs on a diffusers `LTX2VideoTransformer3DModel` through PEFT."""

from __future__ import annotations

import torch

from ..modes import LtxMode
from .io import LoraFormatError
from .keys import linear_module_names
from .targets import TargetOptions, select_lora_targets
from .weights import LoraModuleWeights, LoraWeights

NETWORK_MODULE = "ltxv2_diffusers.lora"
# musubi-tuner's LTX-2 module today (as its docs spell it, and by package), and the seed draft's.
NETWORK_MODULE_ALIASES = ("networks.lora_ltx2", "musubi_tuner.networks.lora_ltx2", "musubi_tuner.networks.lora_ltxv2")


def resolve_network_module(name: str | None) -> str:
    """`--network_module` -> `ltxv2_diffusers.lora` (musubi's `networks.lora_ltx2` and the seed draft's
    `musubi_tuner.networks.lora_ltxv2` are aliases)."""
    if name is None or name == NETWORK_MODULE or name in NETWORK_MODULE_ALIASES:
        return NETWORK_MODULE
    raise ValueError(
        f"--network_module {name!r} is not supported; use {NETWORK_MODULE} "
        f"(or its alias {', '.join(NETWORK_MODULE_ALIASES)})."
    )


def _lora_config(modules: dict[str, tuple[int, float]], dropout: float = 0.0):
    """A PEFT `LoraConfig` adapting exactly `modules` (full name -> (rank, alpha))."""
    from peft import LoraConfig

    counts: dict[tuple[int, float], int] = {}
    for pair in modules.values():
        counts[pair] = counts.get(pair, 0) + 1
    rank, alpha = max(counts, key=counts.__getitem__)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        # Full names, because PEFT matches suffixes (`to_q` would hit every attention).
        target_modules=sorted(modules),
        rank_pattern={n: r for n, (r, _) in modules.items() if r != rank},
        alpha_pattern={n: a for n, (_, a) in modules.items() if a != alpha},
        lora_dropout=dropout,
        init_lora_weights=True,
    )


def _lora_layers(transformer: torch.nn.Module, adapter_name: str) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {
        name: module
        for name, module in transformer.named_modules()
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A
    }


def add_lora(
    transformer: torch.nn.Module,
    mode: LtxMode | str,
    rank: int,
    alpha: float | None = None,
    options: TargetOptions | None = None,
    *,
    dropout: float = 0.0,
    adapter_name: str = "default",
) -> list[str]:
    """Add a trainable LoRA (rank, alpha; alpha defaults to rank) for `mode`; returns the adapted module names.

    Base weights are frozen; only the LoRA weights require grad.
    """
    if rank <= 0:
        raise ValueError(f"--network_dim must be > 0 (got {rank})")
    alpha = float(rank if alpha is None else alpha)
    targets = select_lora_targets(transformer, mode, options)
    transformer.requires_grad_(False)
    transformer.add_adapter(_lora_config({n: (rank, alpha) for n in targets}, dropout), adapter_name=adapter_name)
    adapted = sorted(_lora_layers(transformer, adapter_name))
    if adapted != sorted(targets):
        raise RuntimeError(f"PEFT adapted {len(adapted)} modules, expected {len(targets)}: {sorted(set(adapted) ^ set(targets))[:5]}")
    return targets


def remove_lora(transformer: torch.nn.Module, adapter_name: str = "default") -> None:
    """Remove an unfused adapter; the base weights are left as they were."""
    transformer.delete_adapters(adapter_name)


def lora_parameters(transformer: torch.nn.Module, adapter_name: str = "default") -> list[torch.nn.Parameter]:
    """The trainable parameters of an adapter (what the optimizer gets)."""
    params = []
    for layer in _lora_layers(transformer, adapter_name).values():
        params += [layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight]
    return params


def lora_from_model(
    transformer: torch.nn.Module, adapter_name: str = "default", metadata: dict[str, str] | None = None
) -> LoraWeights:
    """Snapshot a PEFT adapter of the transformer as `LoraWeights` (detached CPU copies)."""
    modules = {}
    for name, layer in _lora_layers(transformer, adapter_name).items():
        rank = layer.r[adapter_name]
        # `scaling` is alpha/r (or alpha/sqrt(r) with rsLoRA); store alpha such that alpha/rank == scaling.
        alpha = layer.lora_alpha[adapter_name]
        if layer.use_rslora.get(adapter_name, False):
            alpha = layer.scaling[adapter_name] * rank
        modules[name] = LoraModuleWeights(
            layer.lora_A[adapter_name].weight.detach().to("cpu", copy=True),
            layer.lora_B[adapter_name].weight.detach().to("cpu", copy=True),
            alpha,
        )
    if not modules:
        raise ValueError(f"the transformer has no LoRA adapter named {adapter_name!r}")
    return LoraWeights(modules, dict(metadata or {}), None)


def check_lora_fits(transformer: torch.nn.Module, lora: LoraWeights) -> None:
    """Raise `LoraFormatError` unless every LoRA module is a linear layer of `transformer` with matching shape."""
    linears = set(linear_module_names(transformer))
    missing = [n for n in lora.modules if n not in linears]
    if missing:
        raise LoraFormatError(
            f"LoRA adapts {len(missing)} modules this transformer does not have, e.g. {missing[:3]}; "
            "it was made for another model (LTX-2.0 vs 2.3, or another architecture)"
        )
    bad = []
    for name, m in lora.modules.items():
        linear = _base_linear(transformer, name)
        if m.down.shape[1] != linear.in_features or m.up.shape[0] != linear.out_features:
            bad.append(
                f"{name}: LoRA maps {m.down.shape[1]}->{m.up.shape[0]}, layer is "
                f"{linear.in_features}->{linear.out_features}"
            )
    if bad:
        raise LoraFormatError(
            f"LoRA shapes do not fit this transformer ({len(bad)} modules, e.g. {bad[:2]}); "
            "it was made for a model of another size"
        )


def _base_linear(transformer: torch.nn.Module, name: str) -> torch.nn.Linear:
    module = transformer.get_submodule(name)
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


_VERSION_WARNINGS: set[tuple[str, str]] = set()


def warn_if_other_base_version(transformer: torch.nn.Module, lora: LoraWeights) -> None:
    """Warn once per (LoRA version, model version) pair when a LoRA trained on another LTX-2 version (its
    `base_model_version` metadata) is applied: users put 2.3 LoRAs on 2.5, which runs where the keys match
    but is not what the LoRA was trained against."""
    import warnings

    from ltxv2_diffusers.models.official_config import model_version_of

    trained_on = lora.metadata.get("base_model_version")
    config = getattr(transformer, "config", None)
    if not trained_on or config is None:
        return
    target = model_version_of(config)
    if trained_on != target and (trained_on, target) not in _VERSION_WARNINGS:
        _VERSION_WARNINGS.add((trained_on, target))
        warnings.warn(f"this LoRA was trained on LTX-2 {trained_on} and is applied to a {target} model: its keys "
                      "match, but expect weaker or different results than on its own base model", stacklevel=3)


def _refuse_quantized(transformer: torch.nn.Module, lora: LoraWeights) -> None:
    # int8/fp8 layers are not `nn.Linear`s: PEFT cannot wrap them and their `.weight` is a dequantized copy
    # (fusing into it would change nothing), so say so instead of "modules this transformer does not have".
    for name in lora.modules:
        try:
            base = _base_linear(transformer, name)
        except AttributeError:
            continue
        if hasattr(base, "qweight"):
            raise TypeError(f"cannot apply a LoRA to {name}: its base weights are stored as {type(base).__name__} "
                            "(--low_memory / --fp8_base); apply LoRAs before the base is quantized, as the trainer "
                            "does")


@torch.no_grad()
def apply_lora(
    transformer: torch.nn.Module,
    lora: LoraWeights,
    strength: float = 1.0,
    *,
    fuse: bool = True,
    adapter_name: str = "default",
) -> list[str]:
    """Apply `lora` to `transformer` at `strength`; returns the adapted module names.

    fuse=True adds `strength * alpha/rank * up @ down` (float32) into the base weights, the way
    ltx-core fuses LoRAs (irreversible; no PEFT needed at inference). fuse=False attaches a PEFT
    adapter instead (trainable, removable with `remove_lora`, e.g. to resume from `--network_weights`).
    """
    _refuse_quantized(transformer, lora)
    check_lora_fits(transformer, lora)
    warn_if_other_base_version(transformer, lora)
    if fuse:
        for name, m in lora.modules.items():
            weight = _base_linear(transformer, name).weight
            delta = m.delta(strength, device=weight.device)
            weight.copy_((delta + weight.float()).to(weight.dtype))
        return list(lora.modules)

    config = _lora_config({n: (m.rank, m.alpha) for n, m in lora.modules.items()})
    transformer.add_adapter(config, adapter_name=adapter_name)
    layers = _lora_layers(transformer, adapter_name)
    for name, m in lora.modules.items():
        layer = layers[name]
        layer.lora_A[adapter_name].weight.copy_(m.down)
        layer.lora_B[adapter_name].weight.copy_(m.up)
        layer.set_scale(adapter_name, strength)
    return list(lora.modules)
