"""`ltxv2-cache-text-encoder-outputs`: text embeddings per item (and for --sample_prompts)."""

from __future__ import annotations

import sys

from . import common


def build_parser():
    p = common.base_parser(__doc__)
    p.add_argument("--text_encoder", "--gemma_root", dest="text_encoder", required=True, help="Hub id or local folder (save_pretrained)")
    p.add_argument("--text_encoder_backend", default="gemma", help="gemma (LTX-2), t5, or a plugin's backend")
    p.add_argument("--tokenizer", default=None, help="Hub id or folder (default: --text_encoder)")
    p.add_argument("--max_length", type=int, default=None, help="tokens per prompt (gemma default 1024, t5 128)")
    p.add_argument("--ltxv2_model", "--ltx2_checkpoint", dest="ltxv2_model", default=None,
                   help="LTX-2 checkpoint holding the text connectors (gemma); defaults to --vae")
    p.add_argument("--vae", default=None, help="the same single file works: its connector weights are used")
    p.add_argument("--text_encoder_dtype", "--dtype", dest="text_encoder_dtype", default=None,
                   help="bf16 (default on CUDA) or fp32 (default on CPU)")
    p.add_argument("--sample_prompts", default=None, help="prompts file: cache its prompts' embeddings too")
    p.add_argument("--sample_prompts_cache", default=None,
                   help="where to store them (default: the first dataset's cache_directory)")
    return p


def _main(argv=None) -> int:
    from ltxv2_diffusers.data.batching import cache_directories
    from ltxv2_diffusers.data.encoders import TextEmbeddingEncoder
    from ltxv2_diffusers.data.jobs import cache_sample_prompts
    from ltxv2_diffusers.data.prompts import parse_sample_prompts

    args = build_parser().parse_args(argv)
    common.warn_ignored(args)
    mode = common.mode_of(args)
    connectors = args.ltxv2_model or args.vae
    if args.text_encoder_backend == "gemma" and connectors is None:
        raise SystemExit("error: the gemma backend needs the LTX-2 text connectors: pass --ltxv2_model "
                         "(or --vae when it is the same single file).")
    common.check_model_path(connectors, "--ltxv2_model" if args.ltxv2_model else "--vae")
    common.check_model_path(args.text_encoder, "--text_encoder")
    config, listing = common.load_items(args, mode)
    encoder = TextEmbeddingEncoder(
        args.text_encoder_backend, args.text_encoder, tokenizer=args.tokenizer, max_length=args.max_length,
        connectors=connectors, audio_video=mode.has_audio, device=args.device, dtype=args.text_encoder_dtype,
    )
    sample_prompts = parse_sample_prompts(args.sample_prompts) if args.sample_prompts else []
    # One process keeps the encoder loaded for both jobs; several GPUs only pay off for big datasets.
    report = common.run_job(args, listing, encoder)
    if args.text_encoder_backend == "gemma":
        from ltxv2_diffusers.text.gemma import text_encoder_family, write_text_cache_info

        family = text_encoder_family(args.text_encoder)
        if family is not None:
            write_text_cache_info(cache_directories(config), family, args.text_encoder)
    if sample_prompts:
        target = args.sample_prompts_cache or cache_directories(config)[0]
        sp = cache_sample_prompts(sample_prompts, encoder, target, batch_size=args.batch_size)
        print(f"sample prompts: {sp.cached} cached, {sp.skipped} already cached in {target}", file=sys.stderr)
    encoder.free()
    return common.finish(report, args, cache_directories(config), listing.items)


def main(argv=None) -> int:
    return common.run_main(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
