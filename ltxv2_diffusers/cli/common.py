"""Flags and plumbing shared by the caching commands (musubi's flags keep their meaning)."""

from __future__ import annotations

import argparse
import logging
import sys

from ltxv2_diffusers.cli.errors import add_debug_flag
from ltxv2_diffusers.modes import MODE_ALIASES, MODE_CHOICES, LtxMode, resolve_mode

logger = logging.getLogger("ltxv2_diffusers.cache")

# musubi flags that have no effect here; accepted so old command lines keep working.
_IGNORED_FLAGS = {
    "--debug_mode": "no debug viewer; inspect caches with `datasets`",
    "--console_width": "no debug viewer", "--console_back": "no debug viewer",
    "--console_num_images": "no debug viewer",
    "--fp8_llm": "fp8 text encoders are not supported; the text encoder runs in --text_encoder_dtype",
    "--fp8_t5": "fp8 text encoders are not supported; the text encoder runs in --text_encoder_dtype",
    "--disable_cudnn_backend": "not needed with diffusers' VAEs",
    # musubi-tuner's LTX-2 caching flags (docs/musubi.md)
    "--ltx2_audio_source": "audio comes from the video's own stream, else a same-named audio file beside it or "
                           "in the dataset's audio_directory",
    "--gemma_load_in_8bit": "the text encoder runs in --text_encoder_dtype",
    "--gemma_load_in_4bit": "the text encoder runs in --text_encoder_dtype",
    "--mixed_precision": "the encoders run in --vae_dtype / --text_encoder_dtype",
}


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--dataset_config", required=True, help="dataset.toml (musubi schema)")
    p.add_argument("--ltx_mode", "--ltx2_mode", dest="ltx_mode", choices=MODE_CHOICES + tuple(MODE_ALIASES), default=None,
                   help="video, av or audio (musubi's v, va, a too); decides which items are valid (av/audio need audio)")
    p.add_argument("--ltxv2_audio_video", action="store_true", help="old spelling of --ltx_mode av")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument("--batch_size", type=int, default=4, help="items per Arrow shard, written as the job goes (a killed job loses at most one)")
    p.add_argument("--num_proc", type=int, default=None,
                   help="map workers; on CUDA worker k uses GPU k %% device_count (one per GPU)")
    p.add_argument("--num_workers", type=int, default=4, help="CPU threads decoding media ahead of the encoder")
    p.add_argument("--skip_existing", action="store_true", default=True,
                   help="skip items already cached with the same fingerprint (default)")
    p.add_argument("--overwrite", dest="skip_existing", action="store_false", help="recompute every item")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any item is bad")
    p.add_argument("--keep_cache", action="store_true",
                   help="keep cached rows of items no longer in the dataset (default: drop them, as musubi)")
    p.add_argument("--repair", action="store_true",
                   help="drop unreadable cache shards (naming each) and recompute their items, then go on as usual")
    add_debug_flag(p)
    p.add_argument("--push_to_hub", metavar="REPO", default=None, help="push the cache as a Hub dataset")
    p.add_argument("--hub_private", action="store_true", help="make the pushed dataset private")
    for flag, why in _IGNORED_FLAGS.items():
        p.add_argument(flag, nargs="?", const=True, default=None, help=f"accepted, ignored: {why}")
    return p


def warn_ignored(args: argparse.Namespace) -> None:
    for flag, why in _IGNORED_FLAGS.items():
        if getattr(args, flag.lstrip("-"), None) is not None:
            print(f"warning: {flag} is accepted for compatibility and ignored: {why}", file=sys.stderr)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def mode_of(args: argparse.Namespace) -> LtxMode:
    try:
        return resolve_mode(args.ltx_mode, args.ltxv2_audio_video)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def check_model_path(path: str | None, flag: str) -> None:
    """Fail before any work when a local checkpoint path is wrong (Hub ids are checked when loading)."""
    import os

    if path and (path.endswith(".safetensors") or path.startswith((".", "/", "~"))) and not os.path.exists(path):
        raise SystemExit(f"error: {flag} {path!r} does not exist.")


def load_items(args: argparse.Namespace, mode: LtxMode):
    """`(config, ListingResult)`; a broken dataset config ends the command with its message."""
    from ltxv2_diffusers.data.config import load_dataset_config
    from ltxv2_diffusers.data.items import list_items

    try:
        config = load_dataset_config(args.dataset_config)
    except (ValueError, OSError) as e:
        raise SystemExit(f"error: {e}") from None
    listing = list_items(config, mode, progress=True)
    return config, listing


def prune_stale(kind: str, items, cache_dirs: list[str], args: argparse.Namespace) -> None:
    """Without --keep_cache, drop cached rows of items that are no longer in the dataset (deleted or
    now bad media), so training, which reads whole cache directories, sees exactly the listed items."""
    from ltxv2_diffusers.data.stores import CacheStore

    if args.keep_cache:
        return
    for cache_dir in cache_dirs:
        keep = {it.key for it in items if it.cache_directory == cache_dir}
        removed = CacheStore(cache_dir, kind).prune(keep)
        if removed:
            print(f"removed {removed} cached {kind} row(s) of items no longer in the dataset from {cache_dir} "
                  "(--keep_cache keeps them)", file=sys.stderr)


def run_job(args: argparse.Namespace, listing, encoder):
    """Run the map job of `encoder` over the listed items with the command's job flags."""
    from ltxv2_diffusers.data.jobs import run_cache_job

    return run_cache_job(listing.items, encoder, listing_bad=listing.bad, batch_size=args.batch_size,
                         num_proc=args.num_proc, skip_existing=args.skip_existing, repair=args.repair)


def finish(report, args: argparse.Namespace, cache_dirs: list[str], items=None) -> int:
    """Drop stale rows, print the summary, push if asked, and return the exit code."""
    from ltxv2_diffusers.data.stores import CacheStore

    if items is not None:
        prune_stale(report.kind, items, cache_dirs, args)
    print(report.summary(), file=sys.stderr)
    code = report.exit_code(strict=args.strict)
    if report.available == 0:
        print(f"error: nothing was cached ({report.kind}); see the bad items above.", file=sys.stderr)
    elif args.strict and report.bad:
        print(f"error: {len(report.bad)} bad item(s) with --strict.", file=sys.stderr)
    if args.push_to_hub and report.available:
        for i, cache_dir in enumerate(cache_dirs):
            store = CacheStore(cache_dir, report.kind)
            if store.exists():
                # Several datasets go to one repo as separate configs.
                name = report.kind if len(cache_dirs) == 1 else f"{report.kind}_{i}"
                store.push_to_hub(args.push_to_hub, config_name=name, private=args.hub_private)
                print(f"pushed {store.path} to {args.push_to_hub} (config {name})", file=sys.stderr)
    return code


def run_main(fn, argv=None) -> int:
    """Run a cache command: errors end as one line and an exit code (`cli/errors.py`)."""
    from .errors import run_cli

    setup_logging()
    return run_cli(fn, argv)
