"""Session-wide test settings."""

import os

# Tiny models on a small CPU run several times faster single-threaded than with one thread per core
# fighting the other test processes (and accelerate launch children inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)
