"""The background batch loader: same order, errors in place, clean shutdown, same training run."""

from __future__ import annotations

import itertools
import threading
import time

import pytest
from conftest import baseline_argv, workspace

from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.prefetch import Prefetcher
from ltxv2_diffusers.training.trainer import Trainer


def test_items_come_in_order_prepared_in_the_loader_thread():
    threads = set()

    def prepare(x):
        threads.add(threading.current_thread().name)
        return x * 10

    with Prefetcher(iter(range(7)), depth=2, prepare=prepare) as items:
        assert list(items) == [0, 10, 20, 30, 40, 50, 60]
        with pytest.raises(StopIteration):
            next(items)
    assert threads == {"ltxv2-prefetch"}


def test_an_error_arrives_after_every_earlier_item():
    def source():
        yield from (1, 2)
        raise ValueError("cache item 3 is corrupt")

    items = Prefetcher(source(), depth=4)
    assert [next(items), next(items)] == [1, 2]
    with pytest.raises(ValueError, match="item 3 is corrupt"):
        next(items)
    with pytest.raises(StopIteration):
        next(items)


def test_close_stops_an_endless_source_and_loads_only_a_few_ahead():
    loaded = []

    def endless():
        for i in itertools.count():
            loaded.append(i)
            yield i

    items = Prefetcher(endless(), depth=2)
    assert next(items) == 0
    time.sleep(0.3)
    assert len(loaded) <= 4  # the consumed item, two queued, one waiting to be queued
    items.close()
    assert not items._thread.is_alive()
    with pytest.raises(ValueError, match="depth must be >= 1"):
        Prefetcher(iter(()), depth=0)


def test_training_with_and_without_prefetch_is_the_same_run(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    losses = {}
    for depth in ("0", "2"):
        out = tmp_path / depth
        Trainer(parse_args(baseline_argv(ws, out, steps=3, extra=["--prefetch_batches", depth]))).run()
        losses[depth] = [m["loss"] for m in read_metrics(out / "logs" / "metrics.jsonl")]
    assert len(losses["0"]) == 3 and losses["0"] == losses["2"]


def test_data_loading_benchmark_smoke(tmp_path, bench_script):
    bench = bench_script("data_loading")
    res = bench.main(["--preset", "tiny", "--items", "3", "--step_ms", "20", "--directory", str(tmp_path)])
    assert res["items"] == 3 and res["load_ms"] > 0 and res["wait_ms"] >= 0
    assert list(tmp_path.iterdir()) == []  # its temporary cache is gone
