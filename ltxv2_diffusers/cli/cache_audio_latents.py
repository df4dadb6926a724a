"""`ltxv2-cache-audio-latents`: audio latents (log-mel -> audio VAE means) for `av` / `audio` training."""

from __future__ import annotations

import sys

from . import common


def build_parser():
    p = common.base_parser(__doc__)
    p.add_argument("--vae", "--audio_vae", "--ltxv2_model", "--ltx2_checkpoint", dest="vae", required=True,
                   help="official LTX-2 single file (its audio_vae.* weights) or a diffusers folder with audio_vae/")
    p.add_argument("--vae_dtype", default="fp32", help="audio VAE dtype (default fp32; it is small)")
    return p


def _main(argv=None) -> int:
    from ltxv2_diffusers.data.batching import cache_directories
    from ltxv2_diffusers.data.encoders import AudioLatentEncoder
    from ltxv2_diffusers.modes import LtxMode

    args = build_parser().parse_args(argv)
    common.warn_ignored(args)
    if args.ltx_mode is None and not args.ltxv2_audio_video:
        mode = LtxMode.AV  # audio latents only make sense with audio; validate items as av
    else:
        mode = common.mode_of(args)
    if not mode.has_audio:
        raise SystemExit("error: --ltx_mode video trains no audio; audio latents are for --ltx_mode av or audio.")
    common.check_model_path(args.vae, "--vae")
    config, listing = common.load_items(args, mode)
    encoder = AudioLatentEncoder(args.vae, device=args.device, dtype=args.vae_dtype, decode_workers=args.num_workers)
    report = common.run_job(args, listing, encoder)
    code = common.finish(report, args, cache_directories(config), listing.items)
    if any(e.reference_audio_directories for e in config.datasets):
        from ltxv2_diffusers.data.jobs import run_cache_job
        from ltxv2_diffusers.data.references import ReferenceAudioEncoder, reference_audio_items

        # Reference audio: the same map job, its own cache kind; a missing reference skips only its item.
        items, bad = reference_audio_items(listing.items, config)
        ref_encoder = ReferenceAudioEncoder(args.vae, device=args.device, dtype=args.vae_dtype,
                                            decode_workers=args.num_workers,
                                            audio_vae_module=getattr(encoder, "_m_vae", None))
        ref_report = run_cache_job(items, ref_encoder, listing_bad=bad, batch_size=args.batch_size,
                                   num_proc=args.num_proc, skip_existing=args.skip_existing, repair=args.repair)
        dirs = sorted({d for e in config.datasets for d in e.reference_audio_cache_directories})
        code = max(code, common.finish(ref_report, args, dirs, items))
    return code


def main(argv=None) -> int:
    return common.run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
