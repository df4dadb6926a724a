"""`ltxv2-export-cache`: convert caches between the Arrow caches and the musubi per-item layout."""

from __future__ import annotations

import argparse
import sys

from ltxv2_diffusers.data.musubi import DEFAULT_NAMING, NAMINGS

from . import common
from .errors import add_debug_flag


def build_parser():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--format", required=True, choices=("musubi", "arrow"),
                   help="musubi: Arrow caches -> per-item safetensors; arrow: per-item safetensors -> Arrow caches")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dataset_config", help="convert every dataset's cache_directory")
    src.add_argument("--cache_directory", nargs="+", help="convert these cache directories")
    p.add_argument("--output_directory", default=None,
                   help="write there instead of beside the source (only with one cache directory)")
    p.add_argument("--musubi_naming", choices=NAMINGS, default=DEFAULT_NAMING,
                   help="with --format musubi: ltx2 (musubi-tuner's ltx-2 branch today: `*_ltx2*.safetensors`, "
                        "normalized latents, one text cache per media file; needs --vae) or ltxv2 (the seed draft's "
                        "names, raw latents, text per item)")
    p.add_argument("--vae", default=None,
                   help="LTX-2 checkpoint (official file or diffusers folder) whose VAE statistics convert between "
                        "raw latents and musubi's normalized `ltx2` caches")
    add_debug_flag(p)
    return p


def _main(argv=None) -> int:
    from ltxv2_diffusers.data.batching import cache_directories
    from ltxv2_diffusers.data.musubi import (
        export_arrow_to_musubi, import_musubi_to_arrow, latent_stats_from_vae, video_context_width,
    )

    args = build_parser().parse_args(argv)
    if args.dataset_config:
        from ltxv2_diffusers.data.config import load_dataset_config

        dirs = cache_directories(load_dataset_config(args.dataset_config))
    else:
        dirs = list(args.cache_directory)
    if args.output_directory and len(dirs) > 1:
        raise SystemExit("error: --output_directory needs exactly one source cache directory.")
    stats = latent_stats_from_vae(args.vae) if args.vae else None
    video_width = video_context_width(args.vae) if args.vae else None
    total = 0
    for d in dirs:
        if args.format == "musubi":
            counts = export_arrow_to_musubi(d, args.output_directory, naming=args.musubi_naming, stats=stats,
                                            video_width=video_width)
        else:
            counts = import_musubi_to_arrow(d, args.output_directory, stats=stats)
        total += sum(counts.values())
        print(f"{d} -> {args.format}: " + ", ".join(f"{n} {k}" for k, n in counts.items()), file=sys.stderr)
    if total == 0:
        print("error: no cache found to convert.", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    return common.run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
