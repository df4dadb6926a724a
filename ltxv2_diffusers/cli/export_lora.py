"""`ltxv2-export-lora`: convert an LTX-2 LoRA between the official/ComfyUI, diffusers and musubi layouts."""

from __future__ import annotations

import argparse
import sys

import torch

from .errors import add_debug_flag

_DTYPES = {"keep": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxv2-export-lora",
        description=(
            "Convert an LTX-2 transformer LoRA. The input layout (official/ComfyUI, diffusers or "
            "musubi/kohya) is detected from its keys; alpha is kept exactly (folded into lora_B for official)."
        ),
    )
    parser.add_argument("--input", required=True, help="LoRA .safetensors file (or a diffusers LoRA folder)")
    parser.add_argument("--format", required=True, choices=("official", "diffusers", "musubi"), help="output layout")
    parser.add_argument(
        "--output",
        required=True,
        help="output .safetensors file (for --format diffusers a folder is fine: the file is "
        "written as <folder>/pytorch_lora_weights.safetensors)",
    )
    parser.add_argument("--dtype", choices=tuple(_DTYPES), default="keep", help="tensor dtype of the output")
    add_debug_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the converter; returns the process exit status (2: a bad input file or a LoRA holding NaN/inf)."""
    from .errors import run_cli

    return run_cli(_main, argv, prog="ltxv2-export-lora")


def _main(argv: list[str] | None = None) -> int:
    from ..lora.io import read_lora, write_lora

    args = build_parser().parse_args(argv)
    lora = read_lora(args.input)
    path = write_lora(lora, args.output, args.format, dtype=_DTYPES[args.dtype])
    rank, alpha = lora.main_rank_alpha()
    print(
        f"{args.input} ({lora.source_format}, {len(lora.modules)} modules, rank {rank}, alpha {alpha:g}) "
        f"-> {path} ({args.format})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
