"""`ltxv2-export-cache`: convert caches between the Arrow caches and the musubi per-item layout."""

from __future__ import annotations

import argparse
import sys

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
    add_debug_flag(p)
    return p


def _main(argv=None) -> int:
    from ltxv2_diffusers.data.batching import cache_directories
    from ltxv2_diffusers.data.musubi import export_arrow_to_musubi, import_musubi_to_arrow

    args = build_parser().parse_args(argv)
    if args.dataset_config:
        from ltxv2_diffusers.data.config import load_dataset_config

        dirs = cache_directories(load_dataset_config(args.dataset_config))
    else:
        dirs = list(args.cache_directory)
    if args.output_directory and len(dirs) > 1:
        raise SystemExit("error: --output_directory needs exactly one source cache directory.")
    total = 0
    for d in dirs:
        convert = export_arrow_to_musubi if args.format == "musubi" else import_musubi_to_arrow
        counts = convert(d, args.output_directory)
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
