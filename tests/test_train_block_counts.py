"""Speed flags whose block counts exceed the model's depth stop before the weights load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from conftest import baseline_argv, workspace

from ltxv2_diffusers.models.loading import read_transformer_config
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.speed.setup import SpeedOptions
from ltxv2_diffusers.training.trainer import Trainer, TrainingFailed


def test_block_counts_beyond_the_models_depth_stop_before_loading(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    args = parse_args(baseline_argv(ws, tmp_path, extra=["--gradient_checkpointing"]))
    depth = read_transformer_config(args.ltxv2_model)["num_layers"]
    run = SimpleNamespace(args=args)  # the check reads only the flags and the checkpoint's header

    assert depth == 2  # the demo model
    for recompute in ("compiled", "checkpoint"):  # gradient-hook fetching, whole-block re-runs
        with pytest.raises(TrainingFailed, match=r"--blocks_to_swap must be between 1 and 1 for this 2-block model "
                                                 r"\(got 2\) \(--ltxv2_model "):
            Trainer._check_block_counts(run, SpeedOptions(blocks_to_swap=2, recompute=recompute))
        Trainer._check_block_counts(run, SpeedOptions(blocks_to_swap=1, recompute=recompute))
    with pytest.raises(TrainingFailed, match=rf"--blocks_without_recompute must be between 1 and {depth}"):
        Trainer._check_block_counts(run, SpeedOptions(blocks_without_recompute=depth + 1))
