"""`ltxv2-train-lora` / `train_ltxv2_lora.py`: train an LTX-2 LoRA (video, av or audio) on cached latents.

Runs under `accelerate launch` and plain `python`. Flags are validated before any model loads.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence


def _main(argv: Sequence[str] | None = None) -> int:
    from ltxv2_diffusers import plugins
    from ltxv2_diffusers.training.args import parse_args

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.debug:  # also when `debug = true` comes from --config_file
        from ltxv2_diffusers.cli.errors import request_debug

        request_debug()
    if args.list_plugins:
        print(plugins.describe_plugins())
        return 0
    from ltxv2_diffusers.training.trainer import Trainer

    Trainer(args).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Parse and validate flags, then train. Returns the exit code: 0 done, 2 wrong input (flags, dataset,
    caches, checkpoint), 1 the run failed (no usable LoRA; the message names the last good checkpoint)."""
    from ltxv2_diffusers.cli.errors import run_cli

    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
