"""Optimizer-side levers: bf16 LoRA compute with fp32 master weights, and those masters and AdamW
moments offloaded to pinned host memory."""
