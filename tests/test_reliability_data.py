"""Reliability of caches (docs/reliability.md): damaged shards, bad rows, incomplete item sets, captions, the
cache jobs' workers and temp folders. Each test reproduces a fault and checks what the user sees and keeps."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ltxv2_diffusers.cli import cache_latents
from ltxv2_diffusers.data.batching import BatchManager, CacheSource
from ltxv2_diffusers.data.config import DatasetConfigError, load_dataset_config
from ltxv2_diffusers.data.items import list_items
from ltxv2_diffusers.data.stores import CacheError, CacheStore, tensor_to_columns
from ltxv2_diffusers.data.synthetic import make_dataset, write_dataset_toml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vae_file(tmp_path_factory):
    from ltxv2_diffusers.models.loading import save_official_checkpoint
    from ltxv2_diffusers.models.presets import build_components

    root = tmp_path_factory.mktemp("vae")
    return str(save_official_checkpoint(root / "ltx-2-tiny.safetensors",
                                        **build_components("tiny", components=("vae", "audio_vae"))))


def _video_row(key, latents, num_frames=9):
    return {"key": key, "fingerprint": "t", **tensor_to_columns("latents", latents), "fps": 24.0, "width": 64,
            "height": 64, "num_frames": num_frames, "source": key}


def _text_row(key, text, mask):
    return {"key": key, "fingerprint": "t", **tensor_to_columns("text", text), **tensor_to_columns("text_mask", mask),
            "caption": key}


def _good_video(seed=0):
    return torch.randn(128, 2, 2, 2, generator=torch.Generator().manual_seed(seed))


def _good_text(seed=0):
    return torch.randn(8, 48, generator=torch.Generator().manual_seed(seed)), torch.ones(8, dtype=torch.bool)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # a flipped byte in the schema/keys
        flipped = bytearray(data)
        flipped[100] ^= 0xFF
        path.write_bytes(bytes(flipped))


@pytest.mark.parametrize("how", ["truncated", "empty", "flipped"])
def test_damaged_shard_is_named_and_repaired(how, tmp_path, vae_file, capsys):
    """Case 3: training and the cache job name the damaged shard (exit 2, no traceback); `--repair` (or
    `--overwrite`) drops it and recomputes its items, after which every item is cached again."""
    from ltxv2_diffusers.cli.train import main as train

    toml = make_dataset(tmp_path / "data", num_videos=2, num_frames=9, size=(64, 64), resolution=(64, 64),
                        target_frames=(9,))
    job = ["--dataset_config", str(toml), "--device", "cpu", "--vae", vae_file, "--vae_dtype", "fp32",
           "--num_workers", "1", "--batch_size", "1"]
    assert cache_latents.main(job) == 0
    store = CacheStore(load_dataset_config(toml).datasets[0].cache_directory, "video")
    shard = Path(store.shard_files()[0])
    _damage(shard, how)
    capsys.readouterr()

    model = tmp_path / "never-opened.safetensors"
    model.write_bytes(b"x")
    assert train(["--dataset_config", str(toml), "--ltxv2_model", str(model), "--ltx_mode", "video",
                  "--ltxv2_timestep_format", "flowmatch_1_1000", "--output_dir", str(tmp_path / "o"),
                  "--log_with", "none"]) == 2
    err = capsys.readouterr().err
    assert f"damaged video latents cache shard(s): {shard}" in err and "ltxv2-cache-latents" in err
    assert "--repair" in err and "Traceback" not in err

    assert cache_latents.main(job) == 2  # without --repair: the same one line
    err = capsys.readouterr().err
    assert f"{shard}: damaged cache shard" in err and "--repair" in err and "Traceback" not in err
    if how == "empty":  # --overwrite recomputes everything, so it drops damaged shards too
        assert cache_latents.main(job + ["--overwrite"]) == 0
        assert f"removed damaged shard {shard}" in capsys.readouterr().err
    else:
        assert cache_latents.main(job + ["--repair"]) == 0
        err = capsys.readouterr().err
        assert f"removed damaged shard {shard}" in err and "1 cached, 1 already cached" in err
    assert sorted(store.index()) == ["clip00_00000-009", "clip01_00000-009"]


def test_bad_rows_are_named_and_left_out_before_training(tmp_path, caplog):
    """Cases 8 and 9: rows of the wrong shape or dtype, short bytes, a short mask, an inf: each item is named with
    its shard and why, left out with a summary line; the good items train. All bad: an error."""
    d = str(tmp_path / "cache")
    video = {"good0": _good_video(0), "good1": _good_video(1), "ch64": torch.randn(64, 2, 2, 2),
             "three_d": torch.randn(128, 2, 2), "int64": torch.ones(128, 2, 2, 2, dtype=torch.int64)}
    inf = _good_video(2)
    inf[3, 1, 0, 1] = float("inf")
    video["inf"] = inf
    rows = [_video_row(k, v) for k, v in video.items()]
    short = _video_row("short_bytes", _good_video(3))
    short["latents"] = short["latents"][:-8]
    rows.append(short)
    CacheStore(d, "video").write_shard(rows)
    texts = [_text_row(k, *_good_text(i)) for i, k in enumerate([*video, "short_bytes"])]
    texts.append(_text_row("short_mask", *_good_text(9)))
    texts[-1] = _text_row("short_mask", _good_text(9)[0], torch.ones(5, dtype=torch.bool))
    CacheStore(d, "text").write_shard(texts)
    CacheStore(d, "video").write_shard([_video_row("short_mask", _good_video(9))])

    with caplog.at_level("WARNING"):
        manager = BatchManager([CacheSource(d)], "video")
    assert manager.item_keys() == ["good0", "good1"]
    assert sorted(manager.left_out) == ["ch64", "inf", "int64", "short_bytes", "short_mask", "three_d"]
    log = caplog.text
    for key, why in [("ch64", "64 channels"), ("three_d", "expected 4 dimensions"), ("int64", "is int64"),
                     ("inf", "holds NaN/inf"), ("short_bytes", "4088 bytes, 4096 expected for float32 [128, 2, 2, 2]"),
                     ("short_mask", "does not fit `text` of 8 tokens")]:
        assert f"item {key!r}: " in log and why in log, (key, why)
    assert "6 of 8 cached item(s) in" in log and "left out of training" in log
    assert all(torch.isfinite(b["latents"]).all() for b in manager.iter_epoch(0))

    # A second open reads only the memo (the shards are unchanged), with the same verdict.
    assert BatchManager([CacheSource(d)], "video").item_keys() == ["good0", "good1"]
    only_bad = str(tmp_path / "bad")
    CacheStore(only_bad, "video").write_shard([_video_row("inf", inf)])
    CacheStore(only_bad, "text").write_shard([_text_row("inf", *_good_text())])
    with pytest.raises(ValueError, match="every cached item in .* is unusable"):
        BatchManager([CacheSource(only_bad)], "video")


def test_truncated_musubi_file_is_named(tmp_path, caplog):
    """Case 3: a truncated musubi per-item file is named (path and why) and its item left out."""
    d = tmp_path / "cache"
    d.mkdir()
    for key in ("a", "b"):
        save_file({"latents_2x2x2_fp32": _good_video()}, d / f"{key}_0064x0064_ltxv2.safetensors")
        text, mask = _good_text()
        save_file({"text_fp32": text, "text_mask": mask}, d / f"{key}_ltxv2_te.safetensors")
    broken = d / "b_0064x0064_ltxv2.safetensors"
    broken.write_bytes(broken.read_bytes()[:-50])
    with caplog.at_level("WARNING"):
        manager = BatchManager([CacheSource(str(d))], "video")
    assert manager.item_keys() == ["a"]
    assert f"item 'b': {broken}: unreadable safetensors file" in caplog.text
    good = d / "a_0064x0064_ltxv2.safetensors"
    good.write_bytes(good.read_bytes()[:-50])  # damaged while training runs: the read names item and file
    with pytest.raises(CacheError, match=f"item 'a': {good}: unreadable safetensors file"):
        next(manager.iter_epoch(0))


def test_one_item_set_across_caches(tmp_path, vae_file, capsys, caplog):
    """Case 4: an empty or whitespace caption is rejected when items are listed, so every cache job reports it
    and none caches it; an item one cache lacks is left out of training with a summary line, not a crash.
    Case 13: a UTF-8 byte-order mark is no part of a caption."""
    toml = make_dataset(tmp_path / "data", num_videos=3, num_frames=9, size=(64, 64), resolution=(64, 64),
                        target_frames=(9,))
    videos = tmp_path / "data" / "videos"
    (videos / "clip01.txt").write_text("  \n", encoding="utf-8")
    (videos / "clip02.txt").write_text("\ufeffa clip with a BOM", encoding="utf-8")
    config = load_dataset_config(toml)
    for mode in ("video", "av"):
        listing = list_items(config, mode)
        assert [(Path(p).name, why) for p, why in listing.bad] == [("clip01.txt", "caption is empty")]
        assert {it.key: it.caption for it in listing.items}["clip02_00000-009"] == "a clip with a BOM"
    assert cache_latents.main(["--dataset_config", str(toml), "--device", "cpu", "--vae", vae_file,
                               "--vae_dtype", "fp32", "--num_workers", "1"]) == 0
    assert "clip01.txt: caption is empty" in capsys.readouterr().err

    cache = config.datasets[0].cache_directory
    CacheStore(cache, "text").write_shard([_text_row("clip00_00000-009", *_good_text())])  # clip02's is missing
    with caplog.at_level("WARNING"):
        manager = BatchManager([CacheSource(cache)], "video", dataset_config=str(toml))
    assert manager.item_keys() == ["clip00_00000-009"] and manager.left_out == ["clip02_00000-009"]
    assert ("item 'clip02_00000-009': no cached text embeddings (run ltxv2-cache-text-encoder-outputs "
            f"--dataset_config {toml})") in caplog.text
    assert "1 of 2 cached item(s)" in caplog.text


def test_image_only_dataset_in_av_mode_says_why(tmp_path):
    """Case 13: images have no sound; av mode says so instead of sending the user to the audio cache job."""
    d = str(tmp_path / "cache")
    CacheStore(d, "video").write_shard([_video_row("still0", torch.randn(128, 1, 2, 2), num_frames=1)])
    CacheStore(d, "text").write_shard([_text_row("still0", *_good_text())])
    with pytest.raises(ValueError, match="only images, which have no sound.*--ltx_mode video"):
        BatchManager([CacheSource(d)], "av")


def test_huge_resolution_is_a_config_error(tmp_path):
    """Case 13: a resolution FFmpeg cannot scale to is refused once, naming the key, not per file."""
    (tmp_path / "v").mkdir()
    toml = write_dataset_toml(tmp_path / "d.toml", [dict(video_directory=str(tmp_path / "v"),
                                                         cache_directory=str(tmp_path / "c"),
                                                         resolution=[16384, 16384])])
    with pytest.raises(DatasetConfigError, match="width 16384 is larger than 8192 pixels"):
        load_dataset_config(toml)


@pytest.mark.slow  # two spawned workers import torch: ~18 s on two cores
def test_workers_die_with_the_job_and_temp_folders_are_cleaned(tmp_path, monkeypatch, request):
    """Case 11: map workers (`--num_proc 2`) of a SIGKILLed job end with it; the killed job's temp folder is
    removed by the next job."""
    from ltxv2_diffusers.data.jobs import remove_stale_job_folders

    # A temp folder of this test's own: every cache job that starts removes stale job folders, so one
    # started meanwhile by another test worker would otherwise remove this one before the check below.
    # Short, beside the system's: the map workers' manager puts a Unix socket there (at most 107 bytes).
    private_tmp = tempfile.mkdtemp(prefix="ltxv2-test-")
    request.addfinalizer(lambda: shutil.rmtree(private_tmp, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", private_tmp)
    monkeypatch.setattr(tempfile, "tempdir", private_tmp)

    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from ltxv2_diffusers.data.jobs import run_cache_job
        from ltxv2_diffusers.data.encoders import ItemEncoder
        from ltxv2_diffusers.data.items import Item

        class Slow(ItemEncoder):
            kind = "text"
            def fingerprint(self):
                return "slow"
            def item_fingerprint(self, item, job):
                return "slow"
            def encode_items(self, items, rank=None):
                with open(os.path.join({str(tmp_path)!r}, f"worker-{{os.getpid()}}"), "w"):
                    pass
                time.sleep(120)
                return []

        if __name__ == "__main__":
            items = [Item(key=f"k{{i}}", dataset_index=0, video_path="v.mp4", audio_path=None, caption="c",
                          frame_start=0, num_frames=9, frame_stride=1, bucket=(64, 64), fps=24.0,
                          cache_directory={str(tmp_path / "cache")!r}, is_image=False) for i in range(4)]
            run_cache_job(items, Slow(), num_proc=2, progress=False)
    """))
    log = tmp_path / "job.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(script)], cwd=str(tmp_path), start_new_session=False,
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    try:
        while len(list(tmp_path.glob("worker-*"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, \
                f"workers did not start: {log.read_text(errors='replace')[-2000:]}"
            time.sleep(0.1)
        job_dirs = [p for p in Path(tempfile.gettempdir()).glob(f"ltxv2-job-{proc.pid}@*")]
        assert job_dirs
    finally:
        if proc.poll() is None:  # a job that failed by itself has its own error above
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived the killed job"
    removed = remove_stale_job_folders()
    assert all(str(d) in removed for d in job_dirs) and not any(d.exists() for d in job_dirs)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its (dead) parent's reaper counts as gone
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_a_failed_shard_write_names_the_folder_and_leaves_no_partial_file(tmp_path):
    """Case 12: a write the file system refuses (here: a file-size limit, as a full disk refuses it) ends in one
    line naming the cache folder, exit 1, and no half-written shard."""
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from ltxv2_diffusers.cli.errors import run_cli
        from ltxv2_diffusers.data.stores import CacheStore, tensor_to_columns

        rows = [{{"key": f"k{{i}}", "fingerprint": "f", **tensor_to_columns("latents", torch.randn(128, 4, 8, 8)),
                 "fps": 24.0, "width": 64, "height": 64, "num_frames": 9, "source": "x"}} for i in range(8)]
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        sys.exit(run_cli(lambda argv: CacheStore({str(cache)!r}, "video").write_shard(rows) and 0, []))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [f"error: File too large: {cache / 'ltxv2_video_latents'} (--debug shows the traceback)"]
    assert list((cache / "ltxv2_video_latents").iterdir()) == []


def test_repair_recomputes_unusable_rows(tmp_path, vae_file, capsys):
    """Cases 8/9: a row that reads but is unusable (NaN latents under a valid fingerprint) is left out of
    training; `--repair` recomputes it."""
    toml = make_dataset(tmp_path / "data", num_videos=2, num_frames=9, size=(64, 64), resolution=(64, 64),
                        target_frames=(9,))
    job = ["--dataset_config", str(toml), "--device", "cpu", "--vae", vae_file, "--vae_dtype", "fp32",
           "--num_workers", "1"]
    assert cache_latents.main(job) == 0
    store = CacheStore(load_dataset_config(toml).datasets[0].cache_directory, "video")
    key = "clip01_00000-009"
    row = store.read(store.index()[key])
    poisoned = row["latents"].clone()
    poisoned[0, 0, 0, 0] = float("nan")
    store.write_shard([{**{k: v for k, v in row.items() if k != "latents"}, **tensor_to_columns("latents", poisoned)}])
    capsys.readouterr()
    assert cache_latents.main(job) == 0 and "0 cached, 2 already cached" in capsys.readouterr().err
    assert cache_latents.main(job + ["--repair"]) == 0
    assert "1 item(s) whose cached rows were unusable were cached again" in capsys.readouterr().err
    store = CacheStore(store.cache_directory, "video")
    assert torch.isfinite(store.read(store.index()[key])["latents"]).all()
