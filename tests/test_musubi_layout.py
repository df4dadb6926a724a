"""The musubi per-item safetensors layout: read as is (every spelling), join, export both ways."""

import logging
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from ltxv2_diffusers.cli import export_cache
from ltxv2_diffusers.data import musubi
from ltxv2_diffusers.data.batching import BatchManager, CacheSource
from ltxv2_diffusers.data.stores import CacheStore


def _t(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture
def musubi_dir(tmp_path):
    """Two items written the way the old trainer did, in both suffix spellings and with legacy keys."""
    d = tmp_path / "cache"
    d.mkdir()
    ref = {
        "clip_00000-009": dict(latents=_t(128, 2, 2, 2, dtype=torch.bfloat16, seed=1),
                               audio=_t(8, 5, 16, dtype=torch.bfloat16, seed=2), lengths=4,
                               text=_t(8, 48, dtype=torch.bfloat16, seed=3), mask=torch.tensor([1] * 6 + [0] * 2)),
        "other": dict(latents=_t(128, 2, 2, 2, seed=4), audio=_t(8, 6, 16, seed=5), lengths=6,
                      text=_t(8, 48, dtype=torch.float16, seed=6), mask=torch.ones(8, dtype=torch.bool)),
    }
    a = ref["clip_00000-009"]
    save_file({"latents_2x2x2_bf16": a["latents"]}, d / "clip_00000-009_0064x0064_ltxv2.safetensors")
    save_file({"audio_latents_5x1x1_bfloat16": a["audio"], "audio_lengths_int32": torch.tensor(4, dtype=torch.int32)},
              d / "clip_00000-009_0064x0064_ltxv2_audio.safetensors")
    save_file({"text_bf16": a["text"], "text_mask": a["mask"]}, d / "clip_00000-009_ltxv2_te.safetensors")
    b = ref["other"]
    save_file({"latents_2x2x2_float32": b["latents"]}, d / "other_0064x0064_ltxv2.safetensors")
    save_file({"audio_latents_6x1x1_fp32": b["audio"], "audio_lengths_int64": torch.tensor([6])},
              d / "other_0064x0064_ltxv2_audio.safetensors")
    save_file({"t5_float16": b["text"], "t5_mask": b["mask"]}, d / "other_ltxv2_te.safetensors")
    return str(d), ref


def test_suffixes_are_stripped():
    names = {"latents_3x4x6_bf16": "latents", "latents_3x4x6_bfloat16": "latents", "text_float32": "text",
             "audio_latents_5x1x1_fp32": "audio_latents", "audio_lengths_int32": "audio_lengths",
             "text_mask": "text_mask", "t5_fp16": "t5", "t5_mask": "t5_mask", "audio_lengths": "audio_lengths"}
    assert {n: musubi.strip_suffixes(n) for n in names} == names


def test_training_reads_the_layout_as_is(musubi_dir, caplog, monkeypatch):
    d, ref = musubi_dir
    monkeypatch.setattr(musubi, "_warned_legacy", False)
    entries = musubi.scan_musubi_cache(d)
    assert sorted(entries) == ["clip_00000-009", "other"] and entries["other"].bucket == (64, 64)
    bm = BatchManager([CacheSource(d, batch_size=1)], "av", text_dims=(24, 24))
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.data.musubi"):
        batches = {b["keys"][0]: b for b in bm.iter_epoch(0)} | {b["keys"][0]: b for b in bm.iter_epoch(1)}
    legacy = [r for r in caplog.records if "legacy `t5`/`t5_mask`" in r.getMessage()]
    assert len(legacy) == 1  # one warning, however often the files are read
    for key, r in ref.items():
        b = batches[key]
        assert torch.equal(b["latents"][0], r["latents"]) and b["latents"].dtype == r["latents"].dtype
        assert torch.equal(b["audio_latents"][0], r["audio"])
        assert b["audio_lengths"].tolist() == [r["lengths"]]
        assert torch.equal(b["text"][0], r["text"]) and torch.equal(b["text_mask"][0], r["mask"].bool())
        assert b["fps"].tolist() == [25.0]  # the layout has no frame rate: musubi's default


def test_arrow_rows_and_musubi_files_join_per_item(musubi_dir):
    d, ref = musubi_dir
    os.remove(os.path.join(d, "other_ltxv2_te.safetensors"))
    assert BatchManager([CacheSource(d)], "av").left_out == ["other"]  # left out, said so, the rest trains
    text = _t(8, 48, seed=9)
    from ltxv2_diffusers.data.stores import tensor_to_columns

    CacheStore(d, "text").write_shard([{"key": "other", "fingerprint": "x", "caption": "c",
                                         **tensor_to_columns("text", text),
                                         **tensor_to_columns("text_mask", torch.ones(8, dtype=torch.bool))}])
    batch = BatchManager([CacheSource(d)], "av").collate([(0, "other")])
    assert torch.equal(batch["text"][0], text) and torch.equal(batch["latents"][0], ref["other"]["latents"])


def test_export_both_ways_round_trips_exactly(musubi_dir, tmp_path, capsys):
    d, ref = musubi_dir
    arrow_dir = str(tmp_path / "arrow")
    assert export_cache.main(["--format", "arrow", "--cache_directory", d, "--output_directory", arrow_dir]) == 0
    assert "2 video, 2 audio, 2 text" in capsys.readouterr().err
    video = CacheStore(arrow_dir, "video")
    row = video.read(video.index()["clip_00000-009"])
    assert torch.equal(row["latents"], ref["clip_00000-009"]["latents"]) and row["latents"].dtype == torch.bfloat16
    assert (row["width"], row["height"], row["num_frames"]) == (64, 64, 9)
    assert row["fingerprint"].startswith("imported:")  # a later cache job recomputes rather than trusts it

    back = str(tmp_path / "back")
    assert export_cache.main(["--format", "musubi", "--musubi_naming", "ltxv2", "--cache_directory", arrow_dir,
                              "--output_directory", back]) == 0
    assert sorted(os.listdir(back)) == sorted(os.listdir(d))
    for key, r in ref.items():
        v = load_file(os.path.join(back, f"{key}_0064x0064_ltxv2.safetensors"))
        assert list(v) == [f"latents_2x2x2_{'bf16' if r['latents'].dtype == torch.bfloat16 else 'fp32'}"]
        assert torch.equal(next(iter(v.values())), r["latents"])
        lat, n = musubi.read_audio(os.path.join(back, f"{key}_0064x0064_ltxv2_audio.safetensors"))
        assert torch.equal(lat, r["audio"]) and n == r["lengths"]
        t = load_file(os.path.join(back, f"{key}_ltxv2_te.safetensors"))
        assert "t5_mask" not in t and torch.equal(t["text_mask"].bool(), r["mask"].bool())
        assert torch.equal(musubi.read_text(os.path.join(back, f"{key}_ltxv2_te.safetensors"))[0], r["text"])

    assert export_cache.main(["--format", "musubi", "--cache_directory", str(tmp_path / "empty")]) == 1
