"""How long the trainer's data stream takes per batch, and how much of it the prefetch thread hides.

Writes `--items` cached items at full size in the musubi per-item layout (the trainer reads it as it
is): video latents 128x16x16x24 (768x512x121), audio latents 8x126x16, text contexts 1024x7680
(LTX-2 video + audio connector outputs), all bf16, ~18.6 MB an item. Then reads them through the
trainer's `BatchManager`:

- `load_ms`: a batch read and collated in the consuming thread (`--prefetch_batches 0`);
- `wait_ms`: what the consumer still waits per batch with the background `Prefetcher`
  (`--prefetch_batches 2`) while it spends `--step_ms` on each batch (the GPU step).

Files were just written, so reads come from the page cache: a lower bound on a real disk's time.
Prints one `RESULT {json}` line.

    python benchmarks/data_loading.py                 # full size
    python benchmarks/data_loading.py --preset tiny   # smoke test
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

SHAPES = {  # latents [C, F, H, W], audio latents [C, T, mel], text [L, width]
    "full": dict(latents=(128, 16, 16, 24), audio=(8, 126, 16), text=(1024, 7680)),
    "tiny": dict(latents=(128, 2, 2, 3), audio=(8, 6, 16), text=(8, 48)),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", choices=sorted(SHAPES))
    p.add_argument("--items", type=int, default=12)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--step_ms", type=float, default=1100.0, help="time spent on each batch by the consumer")
    p.add_argument("--directory", default=None, help="where to write the items (default: a temporary folder)")
    return p.parse_args(argv)


def write_items(directory: str, n: int, shapes: dict) -> int:
    """n items in the musubi layout; returns the bytes written."""
    from ltxv2_diffusers.data import musubi

    g = torch.Generator().manual_seed(0)
    total = 0
    bucket = (shapes["latents"][3] * 32, shapes["latents"][2] * 32)
    for i in range(n):
        key = f"clip_{i:05d}"
        latents = torch.randn(shapes["latents"], generator=g).to(torch.bfloat16)
        audio = torch.randn(shapes["audio"], generator=g).to(torch.bfloat16)
        text = torch.randn(shapes["text"], generator=g).to(torch.bfloat16)
        mask = torch.ones(shapes["text"][0], dtype=torch.bool)
        musubi.write_video(directory, key, bucket, latents)
        musubi.write_audio(directory, key, bucket, audio, shapes["audio"][1])
        musubi.write_text(directory, key, text, mask)
        total += sum(t.numel() * t.element_size() for t in (latents, audio, text, mask))
    return total


def main(argv=None) -> dict:
    a = parse(argv)
    from ltxv2_diffusers.data.batching import BatchManager, CacheSource
    from ltxv2_diffusers.training.prefetch import Prefetcher

    shapes = SHAPES[a.preset]
    with tempfile.TemporaryDirectory(dir=a.directory) as directory:
        nbytes = write_items(directory, a.items, shapes)
        width = shapes["text"][1] // 2
        manager = BatchManager([CacheSource(directory, batch_size=a.batch_size)], "av", text_dims=(width, width))

        load = []
        batches = manager.iter_epoch(0)
        while True:
            t = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            load.append((time.perf_counter() - t) * 1e3)

        wait = []
        with Prefetcher(manager.iter_epoch(1), depth=2) as batches:
            for _ in range(len(load)):
                t = time.perf_counter()
                next(batches)
                wait.append((time.perf_counter() - t) * 1e3)
                time.sleep(a.step_ms / 1e3)
    # the first wait has no step before it to hide behind
    res = dict(preset=a.preset, items=a.items, batch_size=a.batch_size, mb_per_item=round(nbytes / a.items / 1e6, 1),
               load_ms=round(statistics.median(load), 2), wait_ms=round(statistics.median(wait[1:] or wait), 3),
               first_wait_ms=round(wait[0], 2), step_ms=a.step_ms)
    print("RESULT " + json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
