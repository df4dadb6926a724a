"""Session-wide test settings and the helpers several test files share.

- `bench_script`: import a script of benchmarks/.
- `leave_spawned_process`: how a spawned gloo worker ends.
- The training workspace (built once per session): `workspace`, `baseline_argv`, `baseline_run`,
  `accelerate_launch`, `subprocess_env`, `lora_tensors`.
- `PoisonSteps`: a real plugin whose extra loss is NaN on chosen steps.
- Tiny LoRA models for the speed tests: `tiny_lora_model`, `tiny_batch`, `adapter_loss`, `lora_grads`.
- musubi's cache layout as musubi writes and finds it: `write_like_musubi`, `musubi_loader_items`.
- Flags and plugins: the `files` fixture with `base_argv`, the `pm` fixture (a fresh plugin manager) and `make_plugin`.

Test files import helpers from here (`from conftest import ...`), never from each other.
"""

import atexit
import fcntl
import glob
import importlib.util
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import types
from pathlib import Path

# Tiny models on a small CPU run several times faster single-threaded than with one thread per core
# fighting the other test processes (and accelerate launch children inherit this).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from ltxv2_diffusers import plugins  # noqa: E402
from ltxv2_diffusers.hookspecs import hookimpl  # noqa: E402

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


# --------------------------------------------------------------------------------------------------
# the training workspace

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "train_ltxv2_lora.py"
STEPS = 6
SAVE_EVERY = 2


_BASE: list[Path] = []


def session_dir() -> Path:
    """A private folder for this test run, removed at its end.

    Not pytest's numbered basetemp: parallel pytest sessions on one machine prune each other's
    numbered folders, which would delete the shared workspace mid-run. The workers of one
    `pytest -n` run share the folder their controller made (`locked_build` builds each thing once for
    all of them); the controller removes it when the run ends.
    """
    if not _BASE:
        path = Path(tempfile.mkdtemp(prefix="ltxv2-train-tests-"))
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _BASE.append(path)
    return _BASE[0]


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and "ltxv2_session_dir" in workerinput:
        _BASE[:] = [Path(workerinput["ltxv2_session_dir"])]
    elif workerinput is None and getattr(config.option, "numprocesses", None):
        config.ltxv2_session_dir = tempfile.mkdtemp(prefix="ltxv2-train-tests-")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """pytest-xdist: tell each worker the run's shared folder."""
    node.workerinput["ltxv2_session_dir"] = node.config.ltxv2_session_dir


def pytest_unconfigure(config):
    if hasattr(config, "ltxv2_session_dir"):
        shutil.rmtree(config.ltxv2_session_dir, ignore_errors=True)


def locked_build(base: Path, name: str, build):
    """Build `base/name` once per session (a `.done` marker makes later calls reuse it)."""
    target = base / name
    done = base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            if target.exists():
                shutil.rmtree(target)
            build(target)
            done.write_text("ok")
    return target


def workspace(tmp_path_factory):
    """The cached av workspace (`DemoWorkspace`); dataset batch_size 2 so two processes split it."""
    from ltxv2_diffusers.cli.demo import DemoWorkspace, run_cache_jobs, write_workspace

    base = session_dir()

    def build(target: Path):
        ws = write_workspace(target, num_clips=4, batch_size=2)
        run_cache_jobs(ws)

    root = locked_build(base, "ltxv2_train_ws", build)
    return DemoWorkspace(root, root / "model" / "ltx-2-tiny.safetensors", root / "gemma-3-tiny",
                         root / "data" / "dataset.toml", root / "prompts.txt")


def baseline_argv(ws, output_dir: Path, steps: int = STEPS, extra=()) -> list[str]:
    """The flags every comparison run shares (only the launcher and output dir differ)."""
    return ws.train_argv(output_dir, steps, ["--save_every_n_steps", str(SAVE_EVERY), "--network_dim", "4",
                                             "--network_alpha", "2", "--lr_scheduler", "linear",
                                             "--lr_warmup_steps", "2", "--gradient_accumulation_steps", "2",
                                             *extra])


def subprocess_env(extra_path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two processes on two shared cores
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if extra_path:
        env["PYTHONPATH"] = extra_path + os.pathsep + env.get("PYTHONPATH", "")
    return env


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def leave_spawned_process() -> None:
    """End a `torch.multiprocessing.spawn` worker once it has saved its results, without tearing gloo down.
    PyTorch's gloo teardown is not safe to race: a group destroyed while DDP still holds it aborts the
    process ("terminate called without an active exception"), and one destroyed while gloo's thread still
    releases an all-reduce that needs the GIL deadlocks. Both were seen in this suite."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def accelerate_launch(argv: list[str], num_processes: int = 1, env=None, timeout: int = 600):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no", "--num_processes", str(num_processes)]
    # On a CPU-only host `--multi_gpu` starts torchrun workers that Accelerate joins with gloo, on a port
    # of their own: two launches at once (`pytest -n`) would both take torchrun's default.
    launcher += ["--multi_gpu", "--main_process_port", str(free_port())] if num_processes > 1 else ["--cpu"]
    proc = subprocess.run([*launcher, str(SCRIPT), *argv], capture_output=True, text=True, timeout=timeout,
                          env=env or subprocess_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def baseline_run(tmp_path_factory) -> Path:
    """One uninterrupted single-process `accelerate launch` run (output dir), shared by several tests."""
    ws = workspace(tmp_path_factory)
    base = session_dir()
    return locked_build(base, "ltxv2_train_baseline", lambda out: accelerate_launch(baseline_argv(ws, out)))


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


class PoisonSteps:
    """A real plugin whose extra loss is NaN on chosen calls (one call per step without accumulation)."""

    def __init__(self, bad_calls):
        self.bad_calls, self.calls = set(bad_calls), 0

    @hookimpl
    def ltxv2_extra_losses(self, outputs):
        self.calls += 1
        value = float("nan") if self.calls in self.bad_calls else 0.0
        return [("poison", outputs["video"].pred.sum() * 0.0 + value)]


@pytest.fixture()
def tiny_train(tmp_path_factory):
    """`(workspace, argv(output_dir, steps, *extra))` for short training runs on the session's shared tiny
    av workspace (model, Gemma, clips and their three caches, built once)."""
    ws = workspace(tmp_path_factory)

    def argv(output_dir, steps: int = 2, *extra: str) -> list[str]:
        return ws.train_argv(output_dir, steps, ["--network_dim", "4", "--network_alpha", "2", *extra])

    return ws, argv


# --------------------------------------------------------------------------------------------------
# tiny LoRA models for the speed tests


def tiny_batch(seed=0):
    """One av batch for the tiny model (video 2x2x3 latents, 6 audio frames, text 7 x 48)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "latents": torch.randn(1, 128, 2, 2, 3, generator=g),
        "audio_latents": torch.randn(1, 8, 6, 16, generator=g),
        "audio_lengths": torch.tensor([5]),
        "text": torch.randn(1, 7, 48, generator=g),
        "text_mask": torch.tensor([[1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool),
        "fps": torch.tensor([24.0]),
    }


def tiny_lora_model(dtype, num_layers=None):
    """The tiny transformer with an av LoRA of rank 4 whose weights are all non-zero."""
    from ltxv2_diffusers.lora import add_lora  # diffusers and peft load with the tests that use them
    from ltxv2_diffusers.models.presets import build_components

    overrides = {"transformer": {"num_layers": num_layers}} if num_layers else None
    transformer = build_components("tiny", components=("transformer",), overrides=overrides)["transformer"]
    add_lora(transformer, "av", 4, 4)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero B so every LoRA weight gets a gradient
        for name, p in transformer.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    transformer.to(dtype)
    return transformer


def tiny_components_with_statistics(seed: int, audio_statistics: bool = True) -> dict:
    """Tiny transformer + VAEs whose latent statistics are not the identity, so normalization shows in outputs."""
    from ltxv2_diffusers.models.presets import build_components

    c = build_components("tiny", seed=seed, components=("transformer", "vae", "audio_vae"))
    gen = torch.Generator().manual_seed(0)
    c["vae"].latents_mean.copy_(torch.randn(128, generator=gen))
    c["vae"].latents_std.copy_(torch.rand(128, generator=gen) + 0.5)
    if audio_statistics:
        # diffusers sizes the tiny audio VAE's statistics per latent channel (8), official checkpoints per packed feature.
        c["audio_vae"].latents_mean.copy_(torch.randn(8, generator=gen))
        c["audio_vae"].latents_std.copy_(torch.rand(8, generator=gen) + 0.5)
    return c


def adapter_loss(adapter, batch):
    """A fixed-noise, fixed-sigma flow-matching loss of one batch (masked mean over tokens)."""
    g = torch.Generator().manual_seed(3)
    sigmas = {"video": torch.tensor([0.6]), "audio": torch.tensor([0.3])}
    noise = {"video": torch.randn(batch["latents"].shape, generator=g),
             "audio": torch.randn(batch["audio_latents"].shape, generator=g)}
    out = adapter(batch, sigmas=sigmas, noise=noise)
    total = 0
    for o in out.values():
        err = (o.pred.float() - o.target).pow(2).mean(-1)
        total = total + (err * o.mask).sum() / o.mask.sum()
    return total


def lora_grads(transformer):
    """Every gradient of the model, as float copies."""
    return {n: p.grad.float().clone() for n, p in transformer.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------------------------------
# musubi's cache layout, written and found as musubi's own code does


def _musubi_dtype_str(dtype):  # musubi's utils.model_utils.dtype_to_str: torch's own name
    return str(dtype).split(".")[-1]


def write_like_musubi(cache_dir, item_key, bucket, latents, fps=25.0, frame_count=9, audio=None, audio_steps=None,
                      text=None, video_width=None):
    """One item as musubi's writers lay it out; `latents`/`audio` already normalized (what its encoders return).
    `text` (per media file) is written when given, split into video/audio prompt embeds at `video_width`."""
    from ltxv2_diffusers.data import musubi

    os.makedirs(cache_dir, exist_ok=True)
    w, h = bucket
    _, f, lh, lw = latents.shape
    base = os.path.join(cache_dir, f"{item_key}_{w:04d}x{h:04d}_ltx2")
    save_file({f"latents_{f}x{lh}x{lw}_{_musubi_dtype_str(latents.dtype)}": latents.contiguous()}, base + ".safetensors",
              metadata={"architecture": "ltx2_v1", "width": str(w), "height": str(h), "format_version": "1.0.1",
                        "frame_count": str(frame_count), "target_fps": str(float(fps)),
                        "duration_seconds": str(frame_count / fps)})
    if audio is not None:
        c, t, m = audio.shape
        lengths = torch.tensor(audio_steps if audio_steps is not None else t, dtype=torch.int32)
        save_file({f"audio_latents_{t}x{m}x{c}_{_musubi_dtype_str(audio.dtype)}": audio.contiguous(),
                   f"audio_lengths_{_musubi_dtype_str(lengths.dtype)}": lengths}, base + "_audio.safetensors",
                  metadata={"architecture": "ltx2_v1", "format_version": "1.0.1", "target_fps": str(float(fps)),
                            "duration_seconds": str(frame_count / fps)})
    if text is not None:
        emb, mask, caption = text
        stem = musubi.media_stem(item_key)
        d = _musubi_dtype_str(emb.dtype)
        vw = video_width or emb.shape[-1]
        sd = {f"video_prompt_embeds_{d}": emb[:, :vw].contiguous(), "prompt_attention_mask": mask.to(torch.int64).clone(),
              f"text_{d}": emb.clone(), "text_mask": mask.to(torch.int64).clone()}
        if vw < emb.shape[-1]:
            sd[f"audio_prompt_embeds_{d}"] = emb[:, vw:].contiguous()
        save_file(sd, os.path.join(cache_dir, f"{stem}_ltx2_te.safetensors"),
                  metadata={"architecture": "ltx2_v1", "caption1": caption, "format_version": "1.0.1"})


def musubi_loader_items(cache_dir, architecture="ltx2"):
    """Items musubi's video dataset `prepare_for_training` finds: every `*_{arch}.safetensors`, split on `_`:
    the last-but-one token is the bucket `WxH`, the one before it the frame window `start-count`, the rest the
    item key whose `{key}_{arch}_te.safetensors` must exist (else the item is skipped); the audio sidecar is the
    latent file's name with `_{arch}_audio`. Returns `{latent file: (text file, audio file or None, frame count)}`."""
    found = {}
    for cache_file in glob.glob(os.path.join(cache_dir, f"*_{architecture}.safetensors")):
        tokens = os.path.basename(cache_file).split("_")
        int_w, int_h = map(int, tokens[-2].split("x"))  # noqa: F841 - musubi parses it; a bad one raises
        frame_pos, frame_count = map(int, tokens[-3].split("-")[:2])
        item_key = "_".join(tokens[:-3])
        te = os.path.join(cache_dir, f"{item_key}_{architecture}_te.safetensors")
        if not os.path.exists(te):
            continue
        audio = cache_file[: -len(f"_{architecture}.safetensors")] + f"_{architecture}_audio.safetensors"
        found[os.path.basename(cache_file)] = (te, audio if os.path.exists(audio) else None, frame_count)
    return found


# --------------------------------------------------------------------------------------------------
# flags and plugins


@pytest.fixture()
def files(tmp_path: Path):
    """Placeholder dataset config, model and prompts files: enough for flag validation, which opens none."""
    dataset = tmp_path / "data.toml"
    dataset.write_text("[[datasets]]\n")
    model = tmp_path / "ltx-2-19b-dev.safetensors"
    model.write_bytes(b"")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat --w 64 --h 64 --f 9\n")
    return dataset, model, prompts


def base_argv(files, tmp_path, *extra):
    """A valid training command line on `files`."""
    dataset, model, _ = files
    return ["--dataset_config", str(dataset), "--ltxv2_model", str(model), "--ltxv2_timestep_format",
            "flowmatch_1_1000", "--output_dir", str(tmp_path / "out"), *extra]


@pytest.fixture
def pm(monkeypatch):
    """A freshly loaded manager; hand-registered plugins removed after."""
    plugins.configure(None)
    before = {name for name, _ in plugins.get_plugin_manager().list_name_plugin()}
    yield plugins.get_plugin_manager()
    for name, plugin in plugins.get_plugin_manager().list_name_plugin():
        if name not in before and plugin is not None:
            plugins.unregister_plugin(name)
    monkeypatch.undo()
    plugins.configure(None)


def make_plugin(name: str, **hooks) -> types.ModuleType:
    """A real module object holding the given hookimpl functions."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, fn)
    return module
