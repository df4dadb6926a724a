#!/usr/bin/env python
"""Train an LTX-2 LoRA: `accelerate launch train_ltxv2_lora.py --help` (same as `ltxv2-train-lora`)."""

import sys

from ltxv2_diffusers.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
