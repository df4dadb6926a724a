"""Session-wide test settings, and the `bench_script` fixture."""

import importlib.util
import os
import pathlib

# Tiny models on a small CPU run several times faster single-threaded than with one thread per core
# fighting the other test processes (and accelerate launch children inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def bench_script():
    """Import a script of benchmarks/ by file name (`bench_script("train_step")`): they are scripts, not a
    package, and the tests run their smoke modes so they never rot."""
    loaded = {}

    def load(name: str):
        if name not in loaded:
            spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
            loaded[name] = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(loaded[name])
        return loaded[name]

    return load


@pytest.fixture()
def tiny_train(tmp_path_factory):
    """`(workspace, argv(output_dir, steps, *extra))` for short training runs on the session's shared tiny
    av workspace (model, Gemma, clips and their three caches, built once)."""
    from test_train_workspace import workspace

    ws = workspace(tmp_path_factory)

    def argv(output_dir, steps: int = 2, *extra: str) -> list[str]:
        return ws.train_argv(output_dir, steps, ["--network_dim", "4", "--network_alpha", "2", *extra])

    return ws, argv
