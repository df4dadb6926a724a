"""What a run really holds in host memory, which the memory planner's host rule (`planner.Host`) relies on:
a bf16 official checkpoint loads memory-mapped (file pages the kernel can drop, not process memory), so
streaming blocks costs only their own copies. Measured on the anonymous memory (RssAnon, Linux) of a fresh
process, whose allocator has no freed memory to hand out again."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import subprocess_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

MEASURE = r"""
import gc, json, sys
from pathlib import Path
from ltxv2_diffusers.models.loading import load_components
from ltxv2_diffusers.speed.block_swap import BlockSwapper, _HostCopy

def anonymous():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

path = sys.argv[1]
del load_components(path, components=["transformer"])["transformer"]  # imports and one-time set-up
gc.collect()
start = anonymous()
transformer = load_components(path, components=["transformer"])["transformer"].requires_grad_(False)
gc.collect()
loaded = anonymous() - start
block = _HostCopy.bytes_needed(transformer.transformer_blocks[0])
swapper = BlockSwapper(transformer, 3, device="cpu")  # the host copies a GPU run pins, here unpinned
gc.collect()
print(json.dumps({"loaded": loaded, "copies": anonymous() - start - loaded, "block": block,
                  "blocks": len(transformer.transformer_blocks)}))
"""


def test_a_bf16_checkpoint_stays_mapped_and_streaming_costs_only_the_copies(tmp_path):
    from ltxv2_diffusers.models.loading import save_official_checkpoint, transformer_weights_dtype
    from ltxv2_diffusers.models.presets import build_components

    wide = {"num_layers": 6, "num_attention_heads": 16, "attention_head_dim": 64, "cross_attention_dim": 1024,
            "audio_num_attention_heads": 8, "audio_attention_head_dim": 64, "audio_cross_attention_dim": 512}
    path = tmp_path / "wide.safetensors"
    save_official_checkpoint(path, **build_components("tiny", torch_dtype=torch.bfloat16,
                                                      overrides={"transformer": wide}))
    assert transformer_weights_dtype(path) == "BF16"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, timeout=300,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["block"] > 30 * 2**20  # large enough to see against the interpreter's own allocations
    assert m["loaded"] < 0.25 * m["blocks"] * m["block"], m  # the blocks are file pages, not process memory
    assert 2.5 * m["block"] < m["copies"] < 3.5 * m["block"], m  # three blocks' copies, nothing else


def test_the_checkpoints_weight_dtype_is_read_from_its_header(tmp_path):
    """What the planner is told about a checkpoint: bf16 blocks stay mapped, others are cast in memory."""
    from ltxv2_diffusers.models.loading import save_official_checkpoint, transformer_weights_dtype
    from ltxv2_diffusers.models.presets import build_components

    path = tmp_path / "fp32.safetensors"
    save_official_checkpoint(path, **build_components("tiny", components=("transformer",)))
    assert transformer_weights_dtype(path) == "F32"
    folder = tmp_path / "diffusers"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}", encoding="utf-8")
    assert transformer_weights_dtype(folder) is None  # a diffusers folder: not told here
