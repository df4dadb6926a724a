"""Throughput of the video latent cache job (`ltxv2-cache-latents`'s map job) in clips/s.

Writes `--clips` real h264 clips (with aac audio) of `--frames` frames at `--source_size`, lists them
through the dataset config like the command does, and runs the real job: CPU threads decode and
resize ahead while the video VAE (random weights of `--preset`, e.g. the full-size `ltx-2.0`) encodes
on `--device`. Also reports decode-only and encode-only rates, so the bottleneck is visible.

GPU:    python benchmarks/cache_throughput.py                      (768x512x121, ltx-2.0 VAE, bf16, cuda)
smoke:  python benchmarks/cache_throughput.py --preset tiny --device cpu --clips 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="ltx-2.0", help="model preset whose video VAE is built (random weights)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default=None, help="bf16 (default on cuda) or fp32 (default on cpu)")
    p.add_argument("--clips", type=int, default=24)
    p.add_argument("--frames", type=int, default=121)
    p.add_argument("--resolution", type=int, nargs=2, default=(768, 512), metavar=("W", "H"))
    p.add_argument("--source_size", type=int, nargs=2, default=None, metavar=("W", "H"),
                   help="size of the generated source clips (default: 1024x576, or the resolution with --preset tiny)")
    p.add_argument("--decode_workers", type=int, default=8)
    p.add_argument("--batch_size", type=int, default=8, help="items per Arrow shard")
    p.add_argument("--vae_tiling", action="store_true")
    p.add_argument("--decode_processes", action="store_true", help="decode in worker processes, not threads")
    p.add_argument("--workdir", default=None, help="keep clips and cache here (default: a temp dir, removed)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import torch

    from ltxv2_diffusers.data.config import load_dataset_config
    from ltxv2_diffusers.data.items import list_items, load_video_frames
    from ltxv2_diffusers.data.encoders import VideoLatentEncoder
    from ltxv2_diffusers.data.jobs import run_cache_job
    from ltxv2_diffusers.data.synthetic import write_caption, write_dataset_toml, write_video
    from ltxv2_diffusers.models.presets import build_components

    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available; use --device cpu (with --preset tiny for a smoke run).", file=sys.stderr)
        return 2
    dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    source = tuple(args.source_size or ((1024, 576) if args.preset != "tiny" else args.resolution))
    root = args.workdir or tempfile.mkdtemp(prefix="ltxv2-cache-bench-")
    videos = os.path.join(root, "videos")
    t0 = time.perf_counter()
    for i in range(args.clips):
        path = os.path.join(videos, f"clip{i:03d}.mp4")
        if not os.path.exists(path):
            write_video(path, args.frames, source, 24, "h264", audio=True, base_hz=300.0 + 10 * i)
            write_caption(path, f"synthetic clip {i}")
    t_write = time.perf_counter() - t0
    cache = os.path.join(root, "cache")
    shutil.rmtree(cache, ignore_errors=True)
    toml = write_dataset_toml(os.path.join(root, "dataset.toml"), [dict(
        video_directory=videos, cache_directory=cache, resolution=list(args.resolution),
        target_frames=[args.frames], frame_extraction="head")])
    listing = list_items(load_dataset_config(toml), "video")
    items = listing.items
    assert len(items) == args.clips, listing.bad

    vae = build_components(args.preset, components=("vae",), device=args.device,
                           torch_dtype=VideoLatentEncoder("x", dtype=dtype).dtype)["vae"]
    encoder = VideoLatentEncoder(args.preset, device=args.device, dtype=dtype, tiling=args.vae_tiling,
                                 decode_workers=args.decode_workers, vae_module=vae,
                                 decode_processes=args.decode_processes)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    # Decode only: the CPU side's ceiling with the same number of threads.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.decode_workers) as pool:
        decoded = list(pool.map(load_video_frames, items[: min(len(items), args.decode_workers * 2)]))
    decode_rate = len(decoded) / (time.perf_counter() - t0)

    # Encode only (frames already decoded), after one warm-up encode.
    encoder.encode_frames(decoded[0])
    sync()
    n_enc = min(len(decoded), 8)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for frames in decoded[:n_enc]:
        encoder.encode_frames(frames).cpu()
    sync()
    encode_rate = n_enc / (time.perf_counter() - t0)
    del decoded

    # The real job: listing done, map job with decode threads ahead of the encoder, shards written.
    t0 = time.perf_counter()
    report = run_cache_job(items, encoder, batch_size=args.batch_size, progress=False)
    sync()
    job_s = time.perf_counter() - t0
    assert report.cached == args.clips and not report.bad, report.summary()
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None
    result = {
        "preset": args.preset, "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": dtype, "clip": f"{args.resolution[0]}x{args.resolution[1]}x{args.frames}",
        "source": f"{source[0]}x{source[1]} h264", "clips": args.clips, "decode_workers": args.decode_workers,
        "batch_size": args.batch_size, "vae_tiling": args.vae_tiling, "decode_processes": args.decode_processes,
        "job_clips_per_s": round(args.clips / job_s, 3), "decode_only_clips_per_s": round(decode_rate, 3),
        "encode_only_clips_per_s": round(encode_rate, 3), "peak_gib": round(peak, 2) if peak else None,
        "clip_generation_s": round(t_write, 1),
    }
    print(json.dumps(result))
    print(f"cache job: {result['job_clips_per_s']} clips/s  (decode only {result['decode_only_clips_per_s']}, "
          f"encode only {result['encode_only_clips_per_s']} clips/s)", file=sys.stderr)
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
