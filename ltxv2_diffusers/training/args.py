"""Every training flag in one table; the argparse parser, `--config_file` TOML and validation come from it.

`FLAGS` is the single source of truth: the parser is built from it, TOML keys are checked against
it, and `validate_args` runs before any model is loaded so a wrong or contradictory command fails in
well under a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import sys
import tomllib
from pathlib import Path
from typing import Any, Callable, Sequence

from ltxv2_diffusers.models.av_timestep import AV_TIMESTEP_RULES
from ltxv2_diffusers.conditioning.policy import IC_LORA_FIRST_FRAME_P as MUSUBI_FIRST_FRAME_P
from ltxv2_diffusers.conditioning.policy import IC_LORA_STRATEGIES
from ltxv2_diffusers.modes import MODE_ALIASES, MODE_CHOICES, resolve_mode
from ltxv2_diffusers.timesteps import FORMAT_CHOICES, SIGMA_SAMPLING_CHOICES, parse_timestep_format

NETWORK_MODULE = "ltxv2_diffusers.lora"  # the help text only; lora.resolve_network_module decides
OPTIMIZERS = ("AdamW", "AdamW8bit")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)
LOG_WITH = ("tensorboard", "wandb", "none")
MUSUBI_TIMESTEP_FORMAT = "legacy_0_1000"  # musubi-tuner's LTX-2 trainer: timestep t in [0, 1000], sigma = t/1000
# training/sigma_sampling.py draws them; `sigma` is musubi's default, which its LTX-2 trainer reads as the first.
TIMESTEP_SAMPLING = ("shifted_logit_normal", "uniform", "sigmoid", "shift", "sigma")
LTX_VERSIONS = ("2.0", "2.3")
# musubi's --lora_target_preset as --network_args (lora/targets.py); a user's own --network_args keys win.
_AUDIO_ONLY = r"^transformer_blocks\.\d+\.audio_(attn1|attn2|ff)\."
LORA_TARGET_PRESETS: dict[str, dict[str, str]] = {
    "t2v": {},
    "v2v": {"include_ff": "True"},
    "av_ic": {"include_ff": "True"},
    "video_ref_only_av": {"include_ff": "True"},
    "video_sa": {"target_modules": "attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0"},
    "video_sa_ff": {"target_modules": "attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0,ff.net.0.proj,ff.net.2"},
    "video_sa_ca_ff": {"target_modules": "attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0,attn2.to_q,attn2.to_k,"
                                         "attn2.to_v,attn2.to_out.0,ff.net.0.proj,ff.net.2"},
    "audio": {"include_ff": "True", "include_patterns": _AUDIO_ONLY},
    "audio_v2a": {"include_ff": "True",
                  "include_patterns": _AUDIO_ONLY.replace("(attn1|attn2|ff)", "(attn1|attn2|ff)|video_to_audio_attn")},
    "audio_ref_ic": {"include_ff": "True", "include_patterns": _AUDIO_ONLY.replace(
        "(attn1|attn2|ff)", "(attn1|attn2|ff)|video_to_audio_attn|audio_to_video_attn")},
}


logger = logging.getLogger(__name__)


class ArgsError(ValueError):
    """A flag (or `--config_file` entry) is wrong or contradicts another one."""


def _bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Flag:
    """One command-line flag. `kind` is a python type, `bool` (store_true) or `list` (nargs='*')."""

    name: str
    kind: Any = str
    default: Any = None
    help: str = ""
    choices: Sequence[str] | None = None
    group: str = "training"
    aliases: tuple[str, ...] = ()
    ignored: str = ""  # a musubi flag accepted and ignored: why (said once per run)
    unsupported: str = ""  # a musubi flag with no counterpart here: what to do instead (an error)

    @property
    def dest(self) -> str:
        return self.name.lstrip("-")

    def add_to(self, parser: argparse._ActionsContainer) -> None:
        names = [self.name, *self.aliases]
        if self.ignored or self.unsupported:  # takes any value (or none): musubi's meaning does not apply
            help_text = (f"musubi flag, ignored: {self.ignored}" if self.ignored
                         else f"musubi flag, not supported: {self.unsupported}")
            parser.add_argument(*names, dest=self.dest, nargs="*", default=None, metavar="ARG", help=help_text)
        elif self.kind is bool:
            parser.add_argument(*names, dest=self.dest, action="store_true", default=self.default or False,
                                help=self.help)
        elif self.kind is list:
            parser.add_argument(*names, dest=self.dest, nargs="*", default=self.default, help=self.help)
        else:
            parser.add_argument(*names, dest=self.dest, type=self.kind, default=self.default,
                                choices=self.choices, help=self.help)


F = Flag
FLAGS: tuple[Flag, ...] = (
    # --- the musubi LTX-2 command's flags: same names, same meaning ---
    F("--dataset_config", Path, None, "dataset.toml (musubi schema)", group="data"),
    F("--prefetch_batches", int, 2, "batches read from the caches ahead of the step, in a background thread, "
      "so disk reads and collation overlap the GPU (0: read each batch when the step needs it)", group="data"),
    F("--ltx_mode", str, None, "what to train: video (LTXV), av (LTXAV, audio+video) or audio (musubi's v, va, a too)",
      choices=MODE_CHOICES + tuple(MODE_ALIASES), group="model", aliases=("--ltx2_mode",)),
    F("--ltxv2_audio_video", bool, False, "old spelling of --ltx_mode av", group="model"),
    F("--ltxv2_backend", str, None, "checkpoint layout of --ltxv2_model (default: detect)",
      choices=("official", "diffusers"), group="model"),
    F("--ltxv2_model", str, None, "LTX-2 checkpoint: official single file, official transformer file (LTX-2.5), "
      "a folder laid out like the official release, a diffusers folder or a Hub id",
      group="model"),
    F("--vae", str, None, "file/folder with the video VAE, or with both VAEs (default: --ltxv2_model); used "
      "for latent statistics and previews. LTX-2.5: vae/*-video-vae-conv-*.safetensors", group="model"),
    F("--audio_vae", str, None, "audio VAE + vocoder file when they are a file of their own (LTX-2.5: "
      "vae/*-audio-vae-*.safetensors); default: in --vae", group="model"),
    F("--text_encoder", str, None, "text encoder (Hub id or folder); only needed for previews whose "
      "prompts are not in the text cache", group="model", aliases=("--gemma_root",)),
    F("--text_encoder_backend", str, "gemma", "text encoder backend name (gemma, t5, or a plugin's)",
      group="model"),
    F("--tokenizer", str, None, "tokenizer (default: the text encoder's)", group="model"),
    F("--max_length", int, 1024, "text token length for previews encoded at train time", group="model"),
    F("--av_timestep_rule", str, "current", "audio<->video cross-attention timesteps: current (official "
      "ltx-core >= 1.1.4: scale/shift from the modality's own timesteps, gate from the other's sigma) or "
      "legacy (ltx-core 1.0.0, to reproduce older runs)", choices=AV_TIMESTEP_RULES, group="model"),
    F("--ltxv2_timestep_format", str, None, "REQUIRED (except in musubi-tuner's commands, see --ltx2_checkpoint): "
      "timestep convention of the run", choices=FORMAT_CHOICES, group="model"),
    F("--network_module", str, NETWORK_MODULE, f"LoRA module ({NETWORK_MODULE}; musubi's networks.lora_ltx2 "
      "and the older musubi_tuner.networks.lora_ltxv2 are aliases)", group="network"),
    F("--network_dim", int, 16, "LoRA rank", group="network"),
    F("--network_alpha", float, None, "LoRA alpha (default: = rank)", group="network"),
    F("--network_args", list, None, "extra LoRA options as key=value (e.g. include_ff=True)", group="network"),
    F("--network_weights", Path, None, "start from this LoRA file", group="network"),
    F("--sample_prompts", Path, None, "preview prompts, one per line, with --w/--h/--f/--s/--g/--d/--n "
      "overrides (musubi style, any case)", group="previews"),
    F("--video_loss_weight", float, 1.0, "video loss weight (prediction and target scaled by sqrt)",
      group="loss"),
    F("--audio_loss_weight", float, 1.0, "audio loss weight", group="loss"),
    # --- conditioning (ltxv2_diffusers/conditioning; docs/conditioning.md) ---
    F("--first_frame_conditioning_p", float, None, "probability that an item's first latent frame is given clean "
      "(timestep 0, no loss): trains image-to-video (default 0.1 with --ic_lora_strategy or in a musubi command "
      "(--ltx2_checkpoint), as there; else 0)",
      group="conditioning", aliases=("--ltx2_first_frame_conditioning_p",)),
    F("--ic_lora_strategy", str, None, "IC-LoRA reference conditioning: v2v (video reference, --ltx_mode video), "
      "av_ic (video + audio references), video_ref_only_av (video reference, audio trained without one), "
      "audio_ref_ic (audio reference; av or audio); default (musubi's auto): the one --lora_target_preset names, "
      "else none", choices=("auto", "none", *IC_LORA_STRATEGIES), group="conditioning"),
    F("--ic_lora_ref_probability", float, 1.0, "probability the video reference is used at a step (dropped "
      "batch-wide otherwise, so the LoRA also learns to generate without it)", group="conditioning"),
    F("--reference_downscale", int, 1, "references are cached at 1/N of the target's width and height (pass the "
      "same value to ltxv2-cache-latents); positions are scaled back and the factor goes into the LoRA metadata",
      group="conditioning"),
    F("--reference_temporal_scale", int, 1, "references are cached at 1/N of the target's frame rate (first frame, "
      "then every N-th); same value as at caching", group="conditioning"),
    F("--reference_frames", int, None, "video frames of each cached reference (8k+1, as given to "
      "ltxv2-cache-latents); checked against the cache", group="conditioning"),
    F("--audio_ref_use_negative_positions", bool, False, "reference audio at negative positions (ending 0.04 s "
      "before the target starts), as the official Dub-It pipeline feeds it", group="conditioning"),
    F("--extend_prefix_frames", int, 0, "video extension: the first N latent frames given clean (forward "
      "extension); N latent frames are 1+8(N-1) video frames", group="conditioning",
      aliases=("--ltx2_extend_prefix_frames",)),
    F("--extend_suffix_frames", int, 0, "video extension: the last N latent frames given clean (backward "
      "extension)", group="conditioning", aliases=("--ltx2_extend_suffix_frames",)),
    F("--extend_p", float, 1.0, "probability per item that the video extension frames are given",
      group="conditioning", aliases=("--ltx2_extend_p",)),
    F("--audio_extend_prefix_frames", int, 0, "audio extension: the first N audio latent frames (25 per second) "
      "given clean", group="conditioning", aliases=("--ltx2_audio_extend_prefix_frames",)),
    F("--audio_extend_suffix_frames", int, 0, "audio extension: the last N audio latent frames given clean",
      group="conditioning", aliases=("--ltx2_audio_extend_suffix_frames",)),
    F("--audio_extend_p", float, 1.0, "probability per item that the audio extension frames are given",
      group="conditioning", aliases=("--ltx2_audio_extend_p",)),
    F("--sample_include_reference", bool, False, "previews of --sample_prompts lines with --v REFERENCE show the "
      "reference left of the output", group="conditioning"),
    # --- musubi-tuner's LTX-2 flags today (docs/musubi.md maps every one) ---
    F("--ltx2_checkpoint", str, None, "musubi's name of --ltxv2_model; a command using it is a musubi command, "
      "whose timesteps are musubi's (--ltxv2_timestep_format legacy_0_1000 unless given)", group="musubi"),
    F("--ltx_version", str, None, "LTX-2 generation the run expects (musubi): checked against the checkpoint's "
      "metadata per --ltx_version_check_mode", choices=LTX_VERSIONS, group="musubi"),
    F("--ltx_version_check_mode", str, "warn", "what a --ltx_version that contradicts the checkpoint does",
      choices=("off", "warn", "error"), group="musubi"),
    F("--timestep_sampling", str, None, "training sigma distribution: shifted_logit_normal (the official LTX-2 one, "
      "the default), uniform, sigmoid (sigmoid(sigmoid_scale * N(0,1))) or shift (the sigmoid draw shifted by "
      "--discrete_flow_shift); the same sampler as --sigma_sampling", choices=TIMESTEP_SAMPLING, group="loss"),
    F("--discrete_flow_shift", float, 1.0, "shift of --timestep_sampling shift", group="loss"),
    F("--sigmoid_scale", float, 1.0, "scale of the normal draw of --timestep_sampling sigmoid / shift", group="loss"),
    F("--logit_std", float, 1.0, "standard deviation of --timestep_sampling shifted_logit_normal", group="loss"),
    F("--shifted_logit_mode", str, None, "shifted_logit_normal as the official trainer draws it (stretched, a share "
      "uniform) or musubi's older legacy sigmoid(N(shift, logit_std)); default: legacy with --ltx_version 2.0 (as in "
      "musubi), else stretched", choices=("stretched", "legacy"), group="loss"),
    F("--min_timestep", float, None, "lowest training timestep, in --ltxv2_timestep_format (default: its minimum)",
      group="loss"),
    F("--max_timestep", float, None, "highest training timestep, in --ltxv2_timestep_format (default: its maximum)",
      group="loss"),
    F("--preserve_distribution_shape", bool, False, "with --min/--max_timestep: redraw sigmas outside the range "
      "instead of scaling all draws into it", group="loss"),
    F("--lora_target_preset", str, None, "musubi's LoRA target sets (t2v = the default attention projections; "
      "v2v/av_ic add the feed-forwards; video_sa*, audio* restrict the branch); --network_args keys override it",
      choices=tuple(LORA_TARGET_PRESETS), group="network"),
    F("--flash_attn", bool, False, "musubi's spelling of --attention_backend flash", group="musubi"),
    F("--sage_attn", bool, False, "musubi's spelling of --attention_backend sage", group="musubi"),
    F("--xformers", bool, False, "musubi's spelling of --attention_backend xformers", group="musubi"),
    F("--save_last_n_epochs", int, None, "keep only states saved in the last N epochs (musubi)", group="state"),
    F("--save_state_on_train_end", bool, False, "write a full training state (resumable) at the end too",
      group="state"),
    *(F(name, ignored=why, group="musubi") for name, why in (
        ("--sdpa", "PyTorch SDPA is the default attention here"),
        ("--compile", "transformer blocks are compiled by default on CUDA (--no_compile turns it off)"),
        ("--save_state", "every checkpoint here holds the full training state"),
        ("--sample_with_offloading", "previews always keep the VAEs and vocoder in host memory between previews"),
        ("--sample_tiled_vae", "previews always decode in diffusers' VAE tiles"),
        ("--sample_vae_tile_size", "previews always decode in diffusers' VAE tiles"),
        ("--sample_vae_tile_overlap", "previews always decode in diffusers' VAE tiles"),
        ("--sample_vae_temporal_tile_size", "previews always decode in diffusers' VAE tiles"),
        ("--sample_vae_temporal_tile_overlap", "previews always decode in diffusers' VAE tiles"),
        ("--sample_merge_audio", "av previews are mp4 files with their audio already"),
        ("--gemma_load_in_8bit", "the text encoder only encodes preview prompts missing from the text cache"),
        ("--gemma_load_in_4bit", "the text encoder only encodes preview prompts missing from the text cache"),
        ("--separate_audio_buckets", "av and audio modes need audio for every item, so no batch mixes items "
         "with and without it"),
        ("--max_data_loader_n_workers", "batches are read by a background thread (--prefetch_batches)"),
        ("--persistent_data_loader_workers", "batches are read by a background thread (--prefetch_batches)"),
        ("--vae_dtype", "training never runs the VAE; previews use the checkpoint's dtype"),
        ("--dit", "musubi ignores it for LTX-2 too; --ltx2_checkpoint is the model"),
        ("--ddp_static_graph", "DDP's static-graph mode gave other gradients than one process with "
         "--gradient_accumulation_steps here; DDP runs without it"),
    )),
    *(F(name, unsupported=why, group="musubi") for name, why in (
        ("--nf4_base", "use --low_memory (int8 base weights) or --fp8_base"),
        ("--int8_base", "use --low_memory (int8 base weights)"),
        ("--w4a4g4", "use --low_memory (int8 base weights) or --fp8_base"),
        ("--w4a8", "use --low_memory (int8 base weights) or --fp8_base"),
        ("--fused_backward_pass", "use --offload_optimizer to save optimizer memory"),
        ("--blockwise_checkpointing", "use --gradient_checkpointing (and --blocks_without_recompute)"),
        ("--split_attn", "use --attention_backend"),
        ("--shifted_logit_shift", "the shift comes from the token count, as in the official trainer"),
        ("--shifted_logit_uniform_prob", "the official share of uniform draws (0.1) is fixed"),
        ("--shifted_logit_eps", "the official floor (1e-3) is fixed"),
        ("--num_timestep_buckets", "use --timestep_sampling with --min_timestep/--max_timestep"),
        ("--loss_type", "the loss is the flow-matching MSE; a plugin's ltxv2_extra_losses can add terms"),
        ("--network_dropout", "no LoRA dropout here"),
        ("--audio_lr", "one learning rate for all LoRA weights (--learning_rate)"),
        ("--dataset_manifest", "point --dataset_config at the dataset.toml; caches are found by name"),
        ("--train_connectors", "the text connectors stay frozen here"),
    )),
    # --- run ---
    F("--config_file", Path, None, "TOML file of flags (keys = flag names); flags given on the command "
      "line override it", group="run"),
    F("--output_dir", Path, None, "where LoRAs, checkpoints, previews and logs go", group="run"),
    F("--output_name", str, "lora", "file stem of the LoRA", group="run"),
    F("--seed", int, 42, "seed of data order, sigmas and noise", group="run"),
    F("--mixed_precision", str, None, "accelerate mixed precision (default: accelerate config)",
      choices=("no", "fp16", "bf16"), group="run"),
    F("--gradient_checkpointing", bool, False, "recompute activations in backward", group="run"),
    F("--plugins", str, None, "plugins to use: 'none', a comma list to allow, '-name' to block",
      group="run"),
    F("--list_plugins", bool, False, "print the plugins and their hooks, then exit", group="run"),
    F("--log_with", str, None, "experiment tracker (default: tensorboard when installed, else none)",
      choices=LOG_WITH, group="run"),
    F("--logging_dir", Path, None, "tracker directory (default: OUTPUT_DIR/logs)", group="run"),
    # --- optimization ---
    F("--learning_rate", float, 1e-4, "peak learning rate"),
    F("--max_train_steps", int, None, "optimizer steps to train (default 1600 unless --max_train_epochs)"),
    F("--max_train_epochs", int, None, "epochs to train (overrides --max_train_steps)"),
    F("--gradient_accumulation_steps", int, 1, "micro-batches per optimizer step"),
    F("--lr_scheduler", str, "constant", "learning-rate schedule", choices=LR_SCHEDULERS),
    F("--lr_warmup_steps", int, 0, "warm-up steps of the schedule"),
    F("--optimizer_type", str, "AdamW", "AdamW, or AdamW8bit (needs bitsandbytes)", choices=OPTIMIZERS),
    F("--adam_beta1", float, 0.9, "AdamW beta1"),
    F("--adam_beta2", float, 0.999, "AdamW beta2"),
    F("--adam_weight_decay", float, 1e-2, "AdamW weight decay"),
    F("--adam_epsilon", float, 1e-8, "AdamW epsilon"),
    F("--max_grad_norm", float, 1.0, "gradient clipping norm (0 = off)"),
    F("--weighting_scheme", str, "none", "loss weighting over sigma (registered by plugins)", group="loss"),
    F("--sigma_sampling", str, SIGMA_SAMPLING_CHOICES[0], "training sigma distribution of the built-in sampler: "
      "the official LTX-2 shifted logit-normal (shift grows with token count) or uniform (pair it with "
      "--weighting_scheme logit_normal for the SD3 objective)", choices=SIGMA_SAMPLING_CHOICES, group="loss"),
    F("--independent_audio_sigmas", bool, False, "draw audio sigmas independently of video sigmas (av)",
      group="loss"),
    F("--max_nonfinite_steps", int, 5, "stop after this many non-finite losses in a row", group="loss"),
    # --- speed (ltxv2_diffusers/speed/; docs/speed.md). On a CPU every choice runs eager fp32 ---
    F("--memory_budget", str, "auto", "GiB of GPU memory the run may use: the memory planner picks the fastest "
      "combination of streamed blocks, recomputation, optimizer offload and (only when nothing else fits) int8 base "
      "weights that fits, prints it in one line and checks it on the first step; 'auto' (default): the GPU's free "
      "memory; 'off': only the advanced flags below, as given", group="speed"),
    F("--fp8_base", bool, False, "frozen base linears of the transformer blocks in fp8 (e4m3, one scale per output "
      "channel) multiplied in fp8, activations scaled per token: half the weights' memory and faster matmuls, "
      "within fp8 rounding of bf16 (not bit-comparable to it); needs an Ada/Hopper GPU or newer (musubi's "
      "--fp8_scaled is the same flag: ours is always scaled)", group="speed", aliases=("--fp8_scaled",)),
    # --- advanced: hand-set levers; each one given is kept by the planner, which chooses the others ---
    F("--blocks_to_swap", int, None, "keep the frozen weights of N blocks in CPU memory, copied to the GPU ahead "
      "of use (about 0.73 GiB each for LTX-2 19B)", group="advanced"),
    F("--blocks_without_recompute", int, None, "N blocks (spread over the model) keep their matmul and attention "
      "outputs instead of recomputing them in backward (about 0.7 GiB each at 768x512x121, ~6 ms/step faster each "
      "on an H100); needs compiled blocks", group="advanced"),
    F("--offload_optimizer", bool, False, "keep the fp32 master weights and AdamW moments (12 bytes per LoRA "
      "parameter, 2.4 GiB for a rank-32 AV LoRA) in pinned CPU memory; each step's update is applied four blocks "
      "at a time during the next forward (AdamW, CUDA)", group="advanced"),
    F("--offload_activations", bool, False, "with whole blocks re-run in backward: each block's input hidden states "
      "wait in pinned CPU memory between forward and backward (48 x 214 MiB at 1280x720x241); the planner turns it "
      "on where a budget needs it (musubi's --gradient_checkpointing_cpu_offload is the same flag)", group="advanced",
      aliases=("--gradient_checkpointing_cpu_offload",)),
    F("--low_memory", bool, False, "a fixed recipe instead of the planner: int8 frozen base weights and 8 blocks "
      "re-run and streamed (about 21 GiB at 768x512x121)", group="advanced"),
    F("--no_compile", bool, False, "skip torch.compile of the transformer blocks", group="advanced"),
    F("--ddp_timeout", int, 60, "minutes the processes of a several-GPU run wait for each other (they wait "
      "while the main process renders previews or writes checkpoints)", group="advanced"),
    F("--ddp_gradient_as_bucket_view", bool, False, "DDP: gradients as views of its all-reduce buckets (one copy "
      "less)", group="advanced"),
    F("--ddp_find_unused_parameters", bool, False, "DDP: look for LoRA weights a step leaves without a gradient "
      "(only for plugins or modes that skip some)", group="advanced"),
    F("--attention_backend", str, None, "diffusers attention backend (e.g. flash, _native_cudnn)", group="advanced"),
    # --- state ---
    F("--save_every_n_steps", int, None, "save LoRA + training state every N steps", group="state"),
    F("--save_every_n_epochs", int, None, "save LoRA + training state every N epochs", group="state"),
    F("--save_last_n_steps", int, None, "keep only states saved in the last N steps (older ones deleted "
      "after a newer save succeeds)", group="state"),
    F("--resume", str, None, "training state folder to continue from, or 'latest' (in OUTPUT_DIR)",
      group="state"),
    F("--resume_override", list, None, "with --resume: flags (names without --, e.g. learning_rate) that may "
      "differ from the checkpointed run; any other change of rank, learning rate, schedule, seed, accumulation "
      "etc. is an error", group="state"),
    F("--debug", bool, False, "print the full traceback of an error instead of its one-line message", group="run"),
    # --- previews ---
    F("--sample_every_n_steps", int, None, "render previews every N steps", group="previews"),
    F("--sample_every_n_epochs", int, None, "render previews every N epochs", group="previews"),
    F("--sample_at_first", bool, False, "render previews before training", group="previews"),
    F("--sample_steps", int, 20, "default denoising steps of previews", group="previews"),
    F("--sample_guidance_scale", float, 1.0, "default CFG scale of previews (1 = off)", group="previews"),
    # --- hub ---
    F("--push_to_hub", bool, False, "upload the final LoRA with a model card", group="hub"),
    F("--hub_model_id", str, None, "Hub repo for --push_to_hub (user/name)", group="hub"),
    F("--hub_token", str, None, "Hub token (default: the logged-in one)", group="hub"),
    F("--hub_private", bool, False, "create the Hub repo private", group="hub"),
)

FLAG_BY_DEST = {flag.dest: flag for flag in FLAGS}
_GROUP_TITLES = {
    "data": "data", "model": "model", "network": "LoRA network", "loss": "loss", "run": "run",
    "training": "optimization", "conditioning": "conditioning: I2V, extension, IC-LoRA (docs/conditioning.md)",
    "speed": "speed and memory (docs/speed.md)",
    "advanced": "advanced speed and memory (hand-set levers; the planner chooses the rest)", "state": "checkpoints and resume", "previews": "previews", "hub": "Hugging Face Hub",
    "musubi": "musubi-tuner compatibility (docs/musubi.md)",
}


def build_parser(add_plugin_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
                 weighting_choices: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The training parser built from `FLAGS` (plus arguments plugins add)."""
    parser = argparse.ArgumentParser(
        prog="ltxv2-train-lora",
        description="Train a LoRA for LTX-2 (video, audio+video or audio) on cached latents.",
        allow_abbrev=False,
    )
    groups = {key: parser.add_argument_group(title) for key, title in _GROUP_TITLES.items()}
    for flag in FLAGS:
        if flag.dest == "weighting_scheme" and weighting_choices:
            flag = dataclasses.replace(flag, help=f"{flag.help}: {', '.join(weighting_choices)}")
        flag.add_to(groups[flag.group])
    if add_plugin_arguments is not None:
        add_plugin_arguments(parser)
    return parser


def _preparse(argv: Sequence[str]) -> argparse.Namespace:
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config_file", type=Path)
    pre.add_argument("--plugins")
    pre.add_argument("--list_plugins", action="store_true")
    known, _ = pre.parse_known_args(argv)
    return known


def _toml_value(path: Path, key: str) -> Any:
    """One key of a config file, from any table (None when absent or unreadable; load_config_file reports)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    stack = [data]
    while stack:
        table = stack.pop()
        for k, v in table.items():
            if isinstance(v, dict):
                stack.append(v)
            elif k.lstrip("-").replace("-", "_") == key:
                return v
    return None


def load_config_file(path: Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a `--config_file` TOML; keys are flag names (with or without `--`), in any table."""
    if not path.is_file():
        raise ArgsError(f"--config_file {path}: no such file")
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ArgsError(f"--config_file {path}: not valid TOML ({exc})") from None
    flat: dict[str, Any] = {}

    def walk(table: dict[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(value)
            else:
                flat[key.lstrip("-").replace("-", "_")] = value

    walk(data)
    known = {action.dest: action for action in parser._actions}
    known.update({name.lstrip("-"): action for action in parser._actions for name in action.option_strings
                  if name.startswith("--")})  # aliases (musubi's spellings) too
    unknown = sorted(k for k in flat if k not in known or k in {"help", "config_file"})
    if unknown:
        raise ArgsError(f"--config_file {path}: unknown keys {', '.join(unknown)} (keys are flag names, e.g. "
                        "learning_rate = 1e-4)")
    values: dict[str, Any] = {}
    for name, value in flat.items():
        action = known[name]
        key = action.dest
        if isinstance(action, (argparse._StoreTrueAction,)):
            values[key] = _bool(value)
        elif action.nargs == "*":
            values[key] = [str(v) for v in value] if isinstance(value, list) else str(value).split()
        elif action.type is not None and value is not None:
            try:
                values[key] = action.type(value) if not isinstance(value, list) else value
            except (TypeError, ValueError) as exc:
                raise ArgsError(f"--config_file {path}: {name} = {value!r}: {exc}") from None
        else:
            values[key] = value
        if action.choices and values[key] not in action.choices:
            raise ArgsError(f"--config_file {path}: {name} = {value!r}; choose one of "
                            f"{', '.join(map(str, action.choices))}")
    return values


def parse_args(argv: Sequence[str] | None = None, *, validate: bool = True) -> argparse.Namespace:
    """Parse (config file, then flags), let plugins add flags, and validate. Exits 2 on argparse errors."""
    from ltxv2_diffusers import plugins

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = _preparse(argv)
    plugin_policy = pre.plugins
    if plugin_policy is None and pre.config_file is not None and pre.config_file.is_file():
        plugin_policy = _toml_value(pre.config_file, "plugins")  # plugins add flags: configure them first
    plugins.configure(plugin_policy)
    schemes = sorted(plugins.weighting_schemes())
    backends = sorted(plugins.text_encoder_backends())
    parser = build_parser(plugins.add_arguments, schemes)
    if pre.list_plugins:
        args = parser.parse_args(argv)
        return args
    if pre.config_file is not None:
        try:
            parser.set_defaults(**load_config_file(pre.config_file, parser))
        except ArgsError as exc:
            parser.error(str(exc))
    args = parser.parse_args(argv)
    if validate:
        try:
            validate_args(args, weighting_schemes=schemes, text_backends=backends)
        except ArgsError as exc:
            parser.error(str(exc))
    return args


def validate_args(args: argparse.Namespace, weighting_schemes: Sequence[str] | None = None,
                  text_backends: Sequence[str] | None = None) -> argparse.Namespace:
    """Check every flag and their combinations before anything heavy runs; adds `mode` and
    `timestep_format`. Raises `ArgsError` naming the flag and what to do."""
    problems: list[str] = []

    def need(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    if args.ltx2_checkpoint:
        need(args.ltxv2_model in (None, args.ltx2_checkpoint),
             f"--ltx2_checkpoint {args.ltx2_checkpoint} contradicts --ltxv2_model {args.ltxv2_model}: keep one")
        args.ltxv2_model = args.ltxv2_model or args.ltx2_checkpoint
        if args.ltxv2_timestep_format is None:  # musubi: t in [0, 1000], the model's sigma = t / 1000
            args.ltxv2_timestep_format = MUSUBI_TIMESTEP_FORMAT
            logger.warning("musubi-tuner command (--ltx2_checkpoint) without --ltxv2_timestep_format: timesteps "
                           "(--min_timestep/--max_timestep) are read as musubi's, %s", MUSUBI_TIMESTEP_FORMAT)
    try:
        args.timestep_format = parse_timestep_format(args.ltxv2_timestep_format)
    except ValueError as exc:
        problems.append(str(exc))
    try:
        args.mode = resolve_mode(args.ltx_mode, args.ltxv2_audio_video)
    except ValueError as exc:
        problems.append(str(exc))
    need(args.dataset_config is not None, "--dataset_config is required (the dataset.toml the caches were made from)")
    if args.dataset_config is not None:
        need(Path(args.dataset_config).is_file(), f"--dataset_config {args.dataset_config}: no such file")
    need(args.ltxv2_model is not None, "--ltxv2_model is required (official .safetensors, diffusers folder or Hub id)")
    for flag in ("ltxv2_model", "vae", "audio_vae"):
        value = getattr(args, flag)
        if value and _looks_local(value):
            need(Path(value).exists(), f"--{flag} {value}: no such file or folder")
    need(args.output_dir is not None, "--output_dir is required")
    need(bool(args.output_name) and "/" not in args.output_name and "\\" not in args.output_name,
         f"--output_name {args.output_name!r} must be a plain file stem (no folders)")
    from ltxv2_diffusers.lora import resolve_network_module, target_options_from_network_args

    try:
        args.network_module = resolve_network_module(args.network_module)
    except ValueError as exc:
        problems.append(str(exc))
    need(args.prefetch_batches >= 0, f"--prefetch_batches must be >= 0 (got {args.prefetch_batches})")
    need(args.ddp_timeout is None or args.ddp_timeout > 0,
         f"--ddp_timeout must be > 0 minutes (got {args.ddp_timeout})")
    need(args.network_dim > 0, f"--network_dim must be > 0 (got {args.network_dim})")
    if args.network_alpha is None:
        args.network_alpha = float(args.network_dim)
    need(args.network_alpha > 0, f"--network_alpha must be > 0 (got {args.network_alpha})")
    try:
        unknown = sorted(target_options_from_network_args(args.network_args or []).extra)
        need(not unknown, f"--network_args {', '.join(unknown)}: not understood; the keys are target_modules, "
             "include_ff, include_patterns, exclude_patterns, modules")
    except ValueError as exc:
        problems.append(str(exc))
    if args.network_weights is not None:
        need(Path(args.network_weights).is_file(), f"--network_weights {args.network_weights}: no such file")
    need(args.learning_rate > 0, f"--learning_rate must be > 0 (got {args.learning_rate})")
    for flag in ("max_train_steps", "max_train_epochs", "save_every_n_steps", "save_every_n_epochs",
                 "save_last_n_steps", "sample_every_n_steps", "sample_every_n_epochs"):
        value = getattr(args, flag)
        need(value is None or value > 0, f"--{flag} must be > 0 (got {value})")
    if args.max_train_steps is None and args.max_train_epochs is None:
        args.max_train_steps = 1600
    need(args.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1")
    need(args.lr_warmup_steps >= 0, "--lr_warmup_steps must be >= 0")
    need(args.max_grad_norm >= 0, "--max_grad_norm must be >= 0 (0 disables clipping)")
    need(args.max_nonfinite_steps >= 1, "--max_nonfinite_steps must be >= 1")
    need(args.video_loss_weight >= 0, "--video_loss_weight must be >= 0")
    need(args.audio_loss_weight >= 0, "--audio_loss_weight must be >= 0")
    mode = getattr(args, "mode", None)
    if mode is not None:
        if not mode.has_video:
            need(args.video_loss_weight == 1.0,
                 "--video_loss_weight has no effect in --ltx_mode audio; drop it")
        if not mode.has_audio:
            if args.audio_loss_weight != 1.0:  # old commands carry it: train, but say it does nothing
                logger.warning("--audio_loss_weight %g has no effect in --ltx_mode video (no audio is trained); "
                               "ignored (use --ltx_mode av to train audio)", args.audio_loss_weight)
            need(not args.independent_audio_sigmas, "--independent_audio_sigmas needs --ltx_mode av")
        if mode.has_video and mode.has_audio:
            need(args.video_loss_weight + args.audio_loss_weight > 0,
                 "--video_loss_weight and --audio_loss_weight are both 0: nothing to train")
    if args.ltx2_checkpoint and args.first_frame_conditioning_p is None and mode is not None and mode.has_video:
        args.first_frame_conditioning_p = MUSUBI_FIRST_FRAME_P  # musubi's default for every video run
    if args.ic_lora_strategy in (None, "auto") and args.lora_target_preset in IC_LORA_STRATEGIES:
        args.ic_lora_strategy = args.lora_target_preset  # musubi's `auto`: the strategy the preset is made for
    if mode is not None:
        problems.extend(conditioning_problems(args, mode))
    if weighting_schemes is not None:
        need(args.weighting_scheme in weighting_schemes,
             f"--weighting_scheme {args.weighting_scheme!r} is not registered; choose one of "
             f"{', '.join(weighting_schemes)}")
    if text_backends is not None:
        need(args.text_encoder_backend in text_backends,
             f"--text_encoder_backend {args.text_encoder_backend!r} is not registered; choose one of "
             f"{', '.join(text_backends)} (or install the plugin that provides it)")
    if args.optimizer_type == "AdamW8bit":
        need(importlib.util.find_spec("bitsandbytes") is not None,
             "--optimizer_type AdamW8bit needs bitsandbytes: pip install bitsandbytes (or use AdamW)")
    problems.extend(_musubi_flags(args))
    swap = bool(args.blocks_to_swap) and not args.low_memory
    if swap or args.offload_activations:
        import torch

        if not torch.cuda.is_available():  # musubi commands carry them: on the host there is nothing to offload to
            if swap:
                logger.warning("--blocks_to_swap %d has no effect without a CUDA device (the weights are in host "
                               "memory already); ignored", args.blocks_to_swap)
                args.blocks_to_swap = None
            if args.offload_activations:
                logger.warning("--offload_activations has no effect without a CUDA device (the activations are in "
                               "host memory already); ignored")
                args.offload_activations = False
    from ltxv2_diffusers.speed.options import args_problems

    problems.extend(args_problems(args))
    for flag in ("save_last_n_steps", "save_last_n_epochs"):
        if getattr(args, flag) is not None:
            need(getattr(args, flag) > 0, f"--{flag} must be > 0")
            need(args.save_every_n_steps is not None or args.save_every_n_epochs is not None,
                 f"--{flag} needs --save_every_n_steps or --save_every_n_epochs")
    need(args.save_last_n_steps is None or args.save_last_n_epochs is None,
         "--save_last_n_steps and --save_last_n_epochs both set: keep one")
    sampling = args.sample_every_n_steps or args.sample_every_n_epochs or args.sample_at_first
    if sampling:
        need(args.sample_prompts is not None,
             "--sample_every_n_steps/--sample_every_n_epochs/--sample_at_first need --sample_prompts FILE")
    if args.sample_prompts is not None:
        need(Path(args.sample_prompts).is_file(), f"--sample_prompts {args.sample_prompts}: no such file")
        if not sampling:
            logging.getLogger(__name__).warning(
                "--sample_prompts renders no previews without --sample_every_n_steps N, --sample_every_n_epochs N "
                "or --sample_at_first")
    need(args.sample_steps >= 1, "--sample_steps must be >= 1")
    if args.push_to_hub:
        need(bool(args.hub_model_id), "--push_to_hub needs --hub_model_id user/name")
    if args.hub_model_id:
        need(args.hub_model_id.count("/") <= 1 and not args.hub_model_id.startswith("/"),
             f"--hub_model_id {args.hub_model_id!r}: expected 'user/name' or 'name'")
    if args.resume not in (None, "latest"):
        need(Path(args.resume).is_dir(), f"--resume {args.resume}: no such training-state folder "
             "(pass a checkpoint folder or 'latest')")
    if args.resume_override:
        need(args.resume is not None, "--resume_override needs --resume")
    if args.log_with == "wandb":
        need(importlib.util.find_spec("wandb") is not None, "--log_with wandb needs wandb: pip install wandb")
    if args.log_with is None:
        args.log_with = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"
    elif args.log_with == "tensorboard":
        need(importlib.util.find_spec("tensorboard") is not None,
             "--log_with tensorboard needs tensorboard: pip install tensorboard (or --log_with none)")
    if problems:
        raise ArgsError("\n  ".join(["invalid arguments:", *problems]))
    if args.logging_dir is None:
        args.logging_dir = Path(args.output_dir) / "logs"
    return args


def conditioning_problems(args: argparse.Namespace, mode) -> list[str]:
    """What is wrong with the conditioning flags for `mode` (each message names the flags involved)."""
    problems: list[str] = []
    strategy = None if args.ic_lora_strategy in (None, "none", "auto") else args.ic_lora_strategy
    needs = {"v2v": ("video",), "av_ic": ("av",), "video_ref_only_av": ("av",), "audio_ref_ic": ("av", "audio")}
    if strategy and mode.value not in needs[strategy]:
        problems.append(f"--ic_lora_strategy {strategy} needs --ltx_mode {' or '.join(needs[strategy])}, got "
                        f"--ltx_mode {mode.value}")
    video_ref = strategy in ("v2v", "av_ic", "video_ref_only_av")
    for flag in ("first_frame_conditioning_p", "ic_lora_ref_probability", "extend_p", "audio_extend_p"):
        value = getattr(args, flag)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"--{flag} must lie in [0, 1] (got {value})")
    if args.first_frame_conditioning_p and not mode.has_video:
        problems.append(f"--first_frame_conditioning_p conditions video frames; --ltx_mode {mode.value} trains none")
    if args.ic_lora_ref_probability != 1.0 and not video_ref:
        problems.append("--ic_lora_ref_probability drops the video reference: it needs --ic_lora_strategy v2v, av_ic "
                        "or video_ref_only_av")
    for flag in ("reference_downscale", "reference_temporal_scale"):
        value = getattr(args, flag)
        if value < 1:
            problems.append(f"--{flag} must be >= 1 (got {value})")
        elif value != 1 and not video_ref:
            problems.append(f"--{flag} {value} applies to video references: it needs --ic_lora_strategy v2v, av_ic "
                            "or video_ref_only_av")
    if args.reference_frames is not None:
        if args.reference_frames < 1 or (args.reference_frames - 1) % 8:
            problems.append(f"--reference_frames {args.reference_frames} must be 8k+1 (1, 9, 17, ...)")
        elif args.reference_temporal_scale > 1 and ((args.reference_frames - 1) // 8) % args.reference_temporal_scale:
            problems.append(f"--reference_frames {args.reference_frames} cannot be subsampled by "
                            f"--reference_temporal_scale {args.reference_temporal_scale}: use 8k+1 with k a multiple "
                            "of the factor")
        elif not video_ref:
            problems.append("--reference_frames applies to video references: it needs --ic_lora_strategy v2v, av_ic "
                            "or video_ref_only_av")
    if args.audio_ref_use_negative_positions and strategy not in ("av_ic", "audio_ref_ic"):
        problems.append("--audio_ref_use_negative_positions needs an audio reference: --ic_lora_strategy audio_ref_ic "
                        "or av_ic")
    for kind, has in (("", mode.has_video), ("audio_", mode.has_audio)):
        prefix, suffix = getattr(args, f"{kind}extend_prefix_frames"), getattr(args, f"{kind}extend_suffix_frames")
        if prefix < 0 or suffix < 0:
            problems.append(f"--{kind}extend_prefix_frames / --{kind}extend_suffix_frames must be >= 0")
        elif (prefix or suffix) and not has:
            problems.append(f"--{kind}extend_prefix_frames / --{kind}extend_suffix_frames extend "
                            f"{'audio' if kind else 'video'}; --ltx_mode {mode.value} does not train it")
    if not mode.has_video and args.sample_prompts is not None and Path(args.sample_prompts).is_file():
        from ltxv2_diffusers.data.prompts import load_prompts

        try:
            conditioned = [p.index + 1 for p in load_prompts(args.sample_prompts) if p.image or p.reference]
        except ValueError as exc:
            conditioned, problems = [], [*problems, str(exc)]
        if conditioned:
            problems.append(f"--sample_prompts {args.sample_prompts}: prompts {conditioned} have --i / --v, which "
                            f"condition video; --ltx_mode {mode.value} renders none")
    return problems


def _musubi_flags(args: argparse.Namespace) -> list[str]:
    """musubi-tuner's flags: map the ones that map, say once which are ignored, list the unsupported ones.
    Returns the problems (each naming its flag)."""
    problems = []
    for flag in FLAGS:
        value = getattr(args, flag.dest, None)
        if value is None:
            continue
        if flag.unsupported:
            problems.append(f"{flag.name} is a musubi-tuner flag with no counterpart here: {flag.unsupported} "
                            "(docs/musubi.md)")
        elif flag.ignored:
            logger.warning("%s is accepted for musubi-tuner commands and ignored: %s", flag.name, flag.ignored)
    for flag, backend in (("flash_attn", "flash"), ("sage_attn", "sage"), ("xformers", "xformers")):
        if getattr(args, flag):
            if args.attention_backend not in (None, backend):
                problems.append(f"--{flag} contradicts --attention_backend {args.attention_backend}: keep one")
            args.attention_backend = backend
    sigma_sampling = getattr(args, "sigma_sampling", None)
    if args.timestep_sampling and sigma_sampling not in (None, SIGMA_SAMPLING_CHOICES[0], args.timestep_sampling):
        problems.append(f"--timestep_sampling {args.timestep_sampling} contradicts --sigma_sampling {sigma_sampling}: "
                        "keep one")
    for flag in ("discrete_flow_shift", "sigmoid_scale", "logit_std"):
        if not getattr(args, flag) > 0:
            problems.append(f"--{flag} must be > 0 (got {getattr(args, flag)})")
    if getattr(args, "timestep_format", None) is not None:
        from ltxv2_diffusers.training.sigma_sampling import sigma_range

        try:
            sigma_range(args)
        except ValueError as exc:
            problems.append(str(exc))
    if args.preserve_distribution_shape and args.min_timestep is None and args.max_timestep is None:
        problems.append("--preserve_distribution_shape needs --min_timestep and/or --max_timestep")
    if args.lora_target_preset:
        given = network_kwargs(args) if all("=" in a for a in args.network_args or []) else {}
        merged = {**LORA_TARGET_PRESETS[args.lora_target_preset], **given}
        args.network_args = [f"{k}={v}" for k, v in merged.items()] or None
    if args.ltx_version and args.ltx_version_check_mode != "off" and args.ltxv2_model:
        message = _ltx_version_mismatch(args.ltxv2_model, args.ltx_version)
        if message and args.ltx_version_check_mode == "error":
            problems.append(message)
        elif message:
            logger.warning(message)
    return problems


def _ltx_version_mismatch(model: str, version: str) -> str | None:
    """musubi's check: a checkpoint whose config has the 2.3 markers (cross-attention AdaLN, vocoder
    bandwidth extension, audio connector settings, caption projection before the connector) is 2.3,
    others 2.0. Returns the mismatch message, or None."""
    from ltxv2_diffusers.models.loading import read_official_header

    try:
        config, _ = read_official_header(model)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint: the model loader reports it
        return f"--ltx_version {version}: could not read the version of --ltxv2_model {model} ({exc})"
    transformer = config.get("transformer", {})
    markers = [name for name, present in (
        ("transformer.cross_attention_adaln", bool(transformer.get("cross_attention_adaln"))),
        ("vocoder.bwe", isinstance(config.get("vocoder", {}).get("bwe"), dict)),
        ("transformer.audio_connector_*", any(k.startswith("audio_connector_") for k in transformer)),
        ("transformer.caption_proj_before_connector", bool(transformer.get("caption_proj_before_connector"))),
    ) if present]
    detected = "2.3" if markers else "2.0"
    if detected == version:
        return None
    return (f"--ltx_version {version} does not match --ltxv2_model {model} (its config says {detected}"
            f"{': ' + ', '.join(markers) if markers else ''}); set --ltx_version {detected} or "
            "--ltx_version_check_mode off")


def _looks_local(value: str) -> bool:
    """A Hub id is `name` or `org/name` without file suffix; anything else is a local path."""
    if os.path.exists(value) or value.startswith((".", "/", "~")) or os.sep in value.strip("/").split("/", 1)[-1]:
        return True
    return value.endswith((".safetensors", ".sft", ".bin", ".pt")) or value.count("/") > 1


def network_kwargs(args: argparse.Namespace) -> dict[str, str]:
    """`--network_args key=value ...` as a dict of strings."""
    return dict(item.split("=", 1) for item in (args.network_args or []))


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """JSON-friendly copy of the parsed args (for metadata, model cards and state files)."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if key == "hub_token":
            continue
        if isinstance(value, Path):
            value = str(value)
        elif hasattr(value, "value") and isinstance(getattr(value, "value"), str):
            value = value.value
        out[key] = value
    return out
