"""The training model: load the checkpoint, add the LoRA, wrap in the mode's adapter; save LoRA files;
render previews. The trainer talks to models/ and lora/ only through this module.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from ltxv2_diffusers import __version__
from ltxv2_diffusers.conditioning.metadata import conditioning_metadata
from ltxv2_diffusers.data.prompts import load_prompts
from ltxv2_diffusers.lora import (
    add_lora, apply_lora, lora_from_model, lora_parameter_count, read_lora, save_lora,
    target_options_from_network_args,
)
from ltxv2_diffusers.lora import lora_metadata as make_metadata
from ltxv2_diffusers.lora.targets import mode_allows
from ltxv2_diffusers.models.adapter import adapter_class_for_mode
from ltxv2_diffusers.models.loading import (
    is_encoder_only, load_components, read_transformer_config, transformer_weights_dtype,
)
from ltxv2_diffusers.models.official_config import model_version_of
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.training.args import args_to_dict, network_kwargs
from ltxv2_diffusers.training.previews import (
    PromptCache,
    build_preview_pipeline,
    preview_name,
    preview_parts_on,
    preview_pipeline_class,
    render_preview,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainingBundle:
    """What a run holds: the adapter (wrapping the LoRA'd transformer) and, for previews, the VAEs,
    vocoder and the preview prompts' text contexts."""

    adapter: torch.nn.Module
    transformer: torch.nn.Module
    mode: LtxMode
    lora_targets: list[str]
    preview_parts: dict[str, torch.nn.Module] = dataclasses.field(default_factory=dict)
    prompts: list[Any] = dataclasses.field(default_factory=list)
    prompt_cache: Any = None

    def prepare_prompts(self, args, device) -> None:
        """Parse `--sample_prompts` and get every prompt's text context once (cache or text encoder)."""
        self.prompts = load_prompts(args.sample_prompts)
        texts = [p.prompt for p in self.prompts]
        guidance = [args.sample_guidance_scale if p.guidance_scale is None else p.guidance_scale for p in self.prompts]
        texts += [p.negative_prompt for p, g in zip(self.prompts, guidance) if g > 1.0]
        self.prompt_cache = PromptCache.encode(texts, args, device=device)


def _vae_sources(args) -> list[str]:
    """Where the VAEs come from: --vae (else --ltxv2_model), plus --audio_vae when they are split."""
    return [args.vae or args.ltxv2_model, *([args.audio_vae] if getattr(args, "audio_vae", None) else [])]


def model_config(args) -> dict[str, Any] | None:
    """The transformer config of `--ltxv2_model`, read from its header or config file alone (no weights), for
    checks that should fail before a long load. None when it cannot be read here (a Hub id, or a file the
    model loader will report on)."""
    from safetensors import SafetensorError

    try:
        return read_transformer_config(args.ltxv2_model, getattr(args, "ltxv2_backend", None))
    except (OSError, ValueError, KeyError, SafetensorError):
        return None


def checkpoint_weights_dtype(args) -> str | None:
    """How `--ltxv2_model` stores the transformer blocks' weights ("BF16", ...), from its header alone;
    None when it cannot be told here."""
    from safetensors import SafetensorError

    try:
        return transformer_weights_dtype(args.ltxv2_model, getattr(args, "ltxv2_backend", None))
    except (OSError, ValueError, KeyError, SafetensorError):
        return None


def continued_lora_parameters(args) -> int | None:
    """The trainable parameter count of the `--network_weights` LoRA (None without one), from its header."""
    return lora_parameter_count(args.network_weights) if args.network_weights else None


def build_training_model(args, keep_preview_parts: bool = False) -> TrainingBundle:
    """Load the transformer (+ VAE statistics), add the LoRA for `args.mode`, wrap in the adapter. The
    training model stays where it loaded: `speed.setup.apply_speed_options` places it and sets the
    weights' dtypes and gradient checkpointing. Preview parts stay in host memory (`render_previews` moves
    them)."""
    mode: LtxMode = args.mode
    transformer = load_components(args.ltxv2_model, backend=args.ltxv2_backend, components=["transformer"])["transformer"]
    wanted = ["vae", "audio_vae"] + (["vocoder"] if keep_preview_parts else [])
    sources = _vae_sources(args)
    backend = args.ltxv2_backend if not args.vae and len(sources) == 1 else None
    parts = load_components(*sources, backend=backend, components=wanted)
    missing = [name for name in ("vae", "audio_vae") if name not in parts]
    if missing:
        raise ValueError(f"--vae {' '.join(sources)} has no {', '.join(missing)}; pass the LTX-2 checkpoint that "
                         "holds both VAEs, or --vae and --audio_vae (their latent statistics normalize the cached "
                         "latents)")
    transformer.requires_grad_(False)
    if args.network_weights is not None:
        targets = _continue_lora(transformer, mode, args.network_weights)
    else:
        targets = add_lora(transformer, mode, args.network_dim, args.network_alpha,
                           target_options_from_network_args(network_kwargs(args)))
    adapter = adapter_class_for_mode(mode).from_components(
        transformer, vae=parts["vae"], audio_vae=parts["audio_vae"],
        av_timestep_rule=getattr(args, "av_timestep_rule", "current"),
    )
    preview = {}
    if keep_preview_parts:
        if is_encoder_only(parts["vae"]):
            raise ValueError(f"--vae {' '.join(sources)}: previews decode video, which this VAE's diffusion decoder "
                             "cannot do here; pass --vae vae/*-video-vae-conv-*.safetensors")
        # in host memory until a preview needs them (`preview_parts_on`)
        preview = {name: parts[name].eval() for name in ("vae", "audio_vae", "vocoder") if name in parts}
        if "vocoder" not in preview:
            raise ValueError(f"previews need the vocoder, which {' '.join(sources)} lacks (LTX-2.5: pass --audio_vae)")
    return TrainingBundle(adapter=adapter, transformer=transformer, mode=mode, lora_targets=list(targets),
                          preview_parts=preview)


def _continue_lora(transformer, mode: LtxMode, path) -> list[str]:
    """`--network_weights`: attach the file's LoRA as the trainable adapter (its ranks and alphas)."""
    lora = read_lora(path)
    foreign = [name for name in lora.modules if not mode_allows(name, mode)]
    if foreign:
        raise ValueError(f"--network_weights {path}: modules {foreign[:3]} belong to a modality that --ltx_mode "
                         f"{mode.value} must leave untouched")
    return apply_lora(transformer, lora, fuse=False)


def lora_metadata(args, step: int, transformer: torch.nn.Module | None = None) -> dict[str, str]:
    """Metadata stored in every saved LoRA (strings only: safetensors metadata); with the transformer, the
    official version of the base model (`base_model_version`, e.g. "2.5.0")."""
    version = None if transformer is None else model_version_of(transformer.config)
    return make_metadata(mode=args.mode.value, base_model=str(args.ltxv2_model), training_args=args_to_dict(args),
                         rank=args.network_dim, alpha=args.network_alpha, steps=step,
                         timestep_format=args.timestep_format.value, trainer=f"ltxv2-diffusers {__version__}",
                         base_model_version=version,
                         av_timestep_rule=getattr(args, "av_timestep_rule", None),
                         **conditioning_metadata(args))


def save_lora_files(bundle: TrainingBundle, args, directory: Path, name: str, step: int) -> Path:
    """`directory/name.safetensors` (official/ComfyUI) and `directory/name-diffusers/` (diffusers)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    official, _diffusers = save_lora(lora_from_model(bundle.transformer,
                                                     metadata=lora_metadata(args, step, bundle.transformer)),
                                     directory, name)
    return official


def render_previews(bundle: TrainingBundle, args, out_dir: Path, step: int,
                    device: torch.device | str = "cpu") -> list[Path]:
    """One preview file per `--sample_prompts` line with the current LoRA; the preview parts are on `device`
    meanwhile."""
    with preview_parts_on(bundle.preview_parts, device):
        return _render_each(bundle, args, out_dir, step)


def _render_each(bundle: TrainingBundle, args, out_dir: Path, step: int) -> list[Path]:
    parts = bundle.preview_parts
    pipelines: dict[type, Any] = {}  # one stock pipeline per kind of prompt line (--i, --v), sharing the parts
    if getattr(args, "reference_temporal_scale", 1) != 1 and any(p.reference for p in bundle.prompts):
        logger.warning("--v previews: diffusers' LTX2InContextPipeline has no temporal reference factor; the "
                       "reference is placed as if --reference_temporal_scale were 1")
    written = []
    for prompt in bundle.prompts:
        kind = preview_pipeline_class(prompt)
        if kind not in pipelines:
            pipelines[kind] = build_preview_pipeline(bundle.transformer, parts["vae"], parts["audio_vae"],
                                                     parts["vocoder"], pipeline_class=kind)
            pipelines[kind].set_progress_bar_config(disable=True)
        pipeline = pipelines[kind]
        guidance = args.sample_guidance_scale if prompt.guidance_scale is None else prompt.guidance_scale
        negative = bundle.prompt_cache[prompt.negative_prompt] if guidance > 1.0 else None
        written.append(render_preview(
            pipeline, prompt, bundle.prompt_cache[prompt.prompt], negative, bundle.mode,
            Path(out_dir) / preview_name(step, prompt), default_steps=args.sample_steps,
            default_guidance=args.sample_guidance_scale, seed=args.seed,
            reference_downscale=getattr(args, "reference_downscale", 1),
            include_reference=getattr(args, "sample_include_reference", False)))
    return written
