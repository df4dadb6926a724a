"""The training data stream: the cache batch manager (data/batching.py) seen by the trainer.

Batches come in a `(seed, epoch)`-determined order; a resume restarts at `(epoch, batch index)` without
loading the skipped items. A dataset's `batch_size` is per process, as in musubi: with N processes a
global batch holds `batch_size x N` items and every process takes its contiguous 1/N.
"""

from __future__ import annotations

from typing import Any, Iterator

from ltxv2_diffusers.conditioning import ConditioningOptions
from ltxv2_diffusers.data.batching import BatchManager, cache_directories
from ltxv2_diffusers.data.config import load_dataset_config
from ltxv2_diffusers.models.adapter import context_widths
from ltxv2_diffusers.text.gemma import check_text_cache_family
from ltxv2_diffusers.training.model import model_config


def model_text_widths(args) -> tuple[int, int] | None:
    """(video, audio) text-context widths of `--ltxv2_model`, read from its config alone, so a text cache
    made for another backend or layout fails before the model loads. None when unknown (a Hub id, or a
    file the model loader will report on)."""
    config = model_config(args)
    return None if config is None else context_widths(config)


def _check_text_cache_family(args, config) -> None:
    """A text cache of Gemma 3 for an LTX-2.5 checkpoint (or the reverse) fails here, before training."""
    transformer_config = model_config(args)
    if transformer_config is not None:
        check_text_cache_family(cache_directories(config), transformer_config, str(args.ltxv2_model))


class TrainData:
    """Batches per epoch and iteration from a position, for `args.mode` and `args.seed`."""

    def __init__(self, args, world_size: int = 1):
        config = load_dataset_config(args.dataset_config, require_media=False)
        _check_text_cache_family(args, config)
        self.world_size = int(world_size)
        options = ConditioningOptions.from_args(args)
        references = tuple(kind for kind, used in (("video", options.uses_video_reference),
                                                   ("audio", options.uses_audio_reference)) if used)
        self.manager = BatchManager.from_config(config, mode=args.mode, seed=args.seed, processes=self.world_size,
                                                text_dims=model_text_widths(args), references=references)
        if len(self.manager) == 0:
            raise ValueError(f"--dataset_config {args.dataset_config}: no cached items to train on"
                             + (f" (no bucket has {self.world_size} items, one per process)" if self.world_size > 1
                                else ""))
        self.dropped_per_epoch = self.manager.items_dropped_per_epoch()

    def item_keys(self) -> list[str]:
        """Every item key training uses, sorted (recorded in checkpoints to report changes on resume)."""
        return self.manager.item_keys()

    def batching(self) -> dict[str, Any]:
        """The processes and each dataset's global batch size (recorded in checkpoints: a resume on another
        number of processes continues the same training only with the same global batches)."""
        return {"processes": self.world_size,
                "global_batch_sizes": [int(src.batch_size) for src in self.manager.sources]}

    def batches_per_epoch(self) -> int:
        return len(self.manager)

    def iter_epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """`(batch index, global batch)` of `epoch` from batch `start` on."""
        for offset, batch in enumerate(self.manager.iter_epoch(epoch, start=start)):
            yield start + offset, batch
