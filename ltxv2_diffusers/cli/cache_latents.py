"""`ltxv2-cache-latents`: video latents (un-normalized VAE means) for every item of a dataset."""

from __future__ import annotations

import sys

from . import common


def build_parser():
    p = common.base_parser(__doc__)
    p.add_argument("--vae", "--ltxv2_model", "--ltx2_checkpoint", dest="vae", required=True, help="official LTX-2 single file (e.g. ltx-2-19b-dev.safetensors) or "
                   "a diffusers folder with a vae/ subfolder")
    p.add_argument("--vae_dtype", default=None, help="bf16 (default on CUDA), fp16, fp32 (default on CPU)")
    p.add_argument("--vae_tiling", action="store_true", help="spatially tiled encode for every clip (without it, only a clip "
                   "that runs out of GPU memory is encoded again in tiles)")
    p.add_argument("--vae_chunk_size", type=int, default=None,
                   help="temporal tiles of this many frames (multiple of 8) for long clips")
    p.add_argument("--vae_spatial_tile_sample_min_size", type=int, default=None,
                   help="musubi flag: spatial tile size in pixels (implies --vae_tiling)")
    ref = p.add_argument_group("IC-LoRA references (datasets with reference_directory; docs/conditioning.md)")
    ref.add_argument("--reference_downscale", type=int, default=1,
                     help="encode references at 1/N of the item's width and height (train with the same value)")
    ref.add_argument("--reference_temporal_scale", type=int, default=1,
                     help="keep the first reference frame, then every N-th (train with the same value)")
    ref.add_argument("--reference_frames", type=int, default=None,
                     help="frames of each video reference, 8k+1 (default: the item's; a dataset's reference_frames wins)")
    return p


def cache_references(args, config, listing, encoder) -> int | None:
    """The reference job of the datasets that have references (None when none has): same map job, its own
    cache kind; an item whose reference is missing or unusable is reported and skipped."""
    from ltxv2_diffusers.data.jobs import run_cache_job
    from ltxv2_diffusers.data.references import ReferenceLatentEncoder, reference_items

    if not any(e.reference_directories for e in config.datasets):
        return None
    if args.reference_downscale < 1 or args.reference_temporal_scale < 1:
        raise ValueError("--reference_downscale and --reference_temporal_scale must be >= 1")
    if args.reference_frames is not None and (args.reference_frames < 1 or (args.reference_frames - 1) % 8):
        raise ValueError(f"--reference_frames {args.reference_frames} must be 8k+1 (1, 9, 17, ...)")
    items, bad = reference_items(listing.items, config, args.reference_downscale, args.reference_temporal_scale,
                                 args.reference_frames)
    ref_encoder = ReferenceLatentEncoder(
        encoder.vae, device=encoder.device, dtype=encoder.dtype, tiling=encoder.tiling, tile_size=encoder.tile_size,
        chunk_size=encoder.chunk_size, decode_workers=encoder.decode_workers,
        vae_module=getattr(encoder, "_m_vae", None))
    report = run_cache_job(items, ref_encoder, listing_bad=bad, batch_size=args.batch_size, num_proc=args.num_proc,
                           skip_existing=args.skip_existing, repair=args.repair)
    dirs = sorted({d for e in config.datasets for d in e.reference_cache_directories})
    return common.finish(report, args, dirs, items)


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
    code = common.finish(report, args, cache_directories(config), listing.items)
    ref_code = cache_references(args, config, listing, encoder)
    return code if ref_code is None else max(code, ref_code)


def main(argv=None) -> int:
    return common.run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
