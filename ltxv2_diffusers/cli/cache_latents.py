"""`ltxv2-cache-latents`: video latents (un-normalized VAE means) for every item of a dataset."""

from __future__ import annotations

import sys

from . import common


def build_parser():
    p = common.base_parser(__doc__)
    p.add_argument("--vae", "--ltxv2_model", "--ltx2_checkpoint", dest="vae", required=True, help="official LTX-2 single file (e.g. ltx-2-19b-dev.safetensors) or "
                   "a diffusers folder with a vae/ subfolder")
    p.add_argument("--vae_dtype", default=None, help="bf16 (default on CUDA), fp16, fp32 (default on CPU)")
    p.add_argument("--vae_tiling", action="store_true", help="spatially tiled encode for large frames")
    p.add_argument("--vae_chunk_size", type=int, default=None,
                   help="temporal tiles of this many frames (multiple of 8) for long clips")
    p.add_argument("--vae_spatial_tile_sample_min_size", type=int, default=None,
                   help="musubi flag: spatial tile size in pixels (implies --vae_tiling)")
    return p


def _main(argv=None) -> int:
    import torch

    from ltxv2_diffusers.data.batching import cache_directories
    from ltxv2_diffusers.data.encoders import VideoLatentEncoder

    args = build_parser().parse_args(argv)
    common.warn_ignored(args)
    mode = common.mode_of(args)
    if not mode.has_video:
        print("note: --ltx_mode audio trains no video; video latents are not needed.", file=sys.stderr)
    common.check_model_path(args.vae, "--vae")
    config, listing = common.load_items(args, mode)
    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    encoder = VideoLatentEncoder(
        args.vae, device=args.device, dtype=args.vae_dtype or ("bf16" if cuda else "fp32"),
        tiling=args.vae_tiling, tile_size=args.vae_spatial_tile_sample_min_size,
        chunk_size=args.vae_chunk_size, decode_workers=args.num_workers,
    )
    report = common.run_job(args, listing, encoder)
    return common.finish(report, args, cache_directories(config), listing.items)


def main(argv=None) -> int:
    return common.run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
