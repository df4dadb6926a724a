"""`ltxv2-train-lora` / `train_ltxv2_lora.py`: train an LTX-2 LoRA (video, av or audio) on cached latents.

Runs under `accelerate launch` and plain `python`. Flags are validated before any model loads.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and validate flags, then train. Returns the exit code (0 ok, 1 training failed)."""
    from ltxv2_diffusers import plugins
    from ltxv2_diffusers.training.args import parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.list_plugins:
        print(plugins.describe_plugins())
        return 0
    from ltxv2_diffusers.training.trainer import Trainer, TrainingFailed

    try:
        Trainer(args).run()
    except TrainingFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
