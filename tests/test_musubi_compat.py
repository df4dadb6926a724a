"""musubi-tuner's caches as its `ltx-2` branch writes them today (`_ltx2` names, per-video text shared
by frame windows, normalized latents, fps metadata), read as is; our exports found in full by musubi's
loader rules.

`write_like_musubi` (conftest) writes files the way musubi's cache writers do (names, keys, dtypes, metadata)
and `musubi_loader_items` (conftest) finds items the way its dataset loader does (video datasets).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import musubi_loader_items, write_like_musubi
from ltxv2_diffusers.data import musubi
from ltxv2_diffusers.data.batching import BatchManager, CacheSource
from ltxv2_diffusers.data.stores import CacheStore, rows_to_stores, tensor_to_columns


def _t(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _stats(seed=0, channels=128, audio_width=128):
    g = torch.Generator().manual_seed(seed)
    return musubi.LatentStats(torch.randn(channels, generator=g), torch.rand(channels, generator=g) + 0.5,
                              torch.randn(audio_width, generator=g), torch.rand(audio_width, generator=g) + 0.5)


@pytest.fixture
def ltx2_dir(tmp_path):
    """Two videos, two frame windows each, one text cache per video; one video at 30 fps."""
    d = str(tmp_path / "cache")
    stats = _stats()
    ref = {}
    for vi, (stem, fps) in enumerate((("clip_a", 25.0), ("other", 30.0))):
        text = (_t(6, 48, seed=100 + vi, dtype=torch.bfloat16), torch.tensor([1, 1, 1, 1, 0, 0]), f"caption {stem}")
        for wi, start in enumerate((0, 9)):
            key = f"{stem}_{start:05d}-009"
            raw = _t(128, 2, 2, 3, seed=10 * vi + wi)
            raw_audio = _t(8, 7, 16, seed=50 + 10 * vi + wi)
            write_like_musubi(d, key, (96, 64), stats.normalize_video(raw), fps=fps, audio=stats.normalize_audio(raw_audio),
                              audio_steps=6, text=text if wi == 0 else None, video_width=24)
            ref[key] = dict(raw=raw, audio=raw_audio, text=text, fps=fps)
    return d, ref, stats


def test_media_stem_is_musubis_text_key():
    assert musubi.media_stem("clip_a_00000-009") == "clip_a"
    assert musubi.media_stem("clip_00012-017-02") == "clip"  # optional section index
    assert musubi.media_stem("photo_1") == "photo_1"  # images have no window


def test_ltx2_folder_reads_as_is(ltx2_dir):
    d, ref, stats = ltx2_dir
    entries = musubi.scan_musubi_cache(d)
    items = {k: e for k, e in entries.items() if e.video}
    assert sorted(items) == sorted(ref)
    assert all(e.naming == "ltx2" and e.normalized and e.bucket == (96, 64) for e in items.values())
    assert items["clip_a_00009-009"].text.endswith("clip_a_ltx2_te.safetensors")  # shared per-video text
    assert items["clip_a_00009-009"].audio.endswith("clip_a_00009-009_0096x0064_ltx2_audio.safetensors")
    bm = BatchManager([CacheSource(d, batch_size=1)], "av", text_dims=(24, 24))
    assert bm.num_items == 4
    batches = {b["keys"][0]: b for b in bm.iter_epoch(0)}
    for key, r in ref.items():
        b = batches[key]
        assert b["latents_normalized"].tolist() == [True] and b["audio_latents_normalized"].tolist() == [True]
        assert torch.allclose(stats.denormalize_video(b["latents"][0]), r["raw"], atol=1e-5)
        assert torch.allclose(stats.denormalize_audio(b["audio_latents"][0]), r["audio"], atol=1e-5)
        assert b["audio_lengths"].tolist() == [6]
        assert torch.equal(b["text"][0], r["text"][0]) and b["text_mask"][0].tolist() == [True] * 4 + [False] * 2
        assert b["fps"].tolist() == [r["fps"]]


def test_both_namings_and_sidecar_forms_in_one_folder(ltx2_dir):
    d, ref, _ = ltx2_dir
    # the seed draft's item beside today's: raw latents, its own text; an audio sidecar without the bucket
    save_file({"latents_2x2x3_bf16": _t(128, 2, 2, 3, dtype=torch.bfloat16)}, os.path.join(d, "old_0096x0064_ltxv2.safetensors"))
    save_file({"audio_latents_7x1x1_fp32": _t(8, 7, 16), "audio_lengths_int64": torch.tensor([7])},
              os.path.join(d, "old_ltxv2_audio.safetensors"))
    save_file({"text_bf16": _t(6, 48, dtype=torch.bfloat16), "text_mask": torch.ones(6, dtype=torch.int32)},
              os.path.join(d, "old_ltxv2_te.safetensors"))
    entries = musubi.scan_musubi_cache(d)
    old = entries["old"]
    assert old.naming == "ltxv2" and not old.normalized and old.audio and old.text and old.video
    bm = BatchManager([CacheSource(d, batch_size=1)], "av", text_dims=(24, 24))
    batch = bm.collate([(0, "old")])
    assert "latents_normalized" not in batch and batch["fps"].tolist() == [25.0]  # musubi's default rate
    mixed = bm.collate([(0, "old"), (0, "clip_a_00000-009")])
    assert mixed["latents_normalized"].tolist() == [False, True]
    save_file({"latents_2x2x3_bf16": _t(128, 2, 2, 3)}, os.path.join(d, "clip_a_00000-009_0096x0064_ltxv2.safetensors"))
    with pytest.raises(ValueError, match="'clip_a_00000-009' is cached under both"):
        musubi.scan_musubi_cache(d)


def test_missing_per_video_text_names_every_window_left_out(ltx2_dir, caplog):
    d, _, _ = ltx2_dir
    os.remove(os.path.join(d, "other_ltx2_te.safetensors"))
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.data"):
        bm = BatchManager([CacheSource(d)], "av")
    assert bm.num_items == 2
    left = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out of training")]
    assert left == [f"left out of training: item 'other_{w}-009': no cached text embeddings (run "
                    "ltxv2-cache-text-encoder-outputs --dataset_config <your toml>)" for w in ("00000", "00009")]


def test_a_damaged_per_video_text_cache_leaves_out_every_window(ltx2_dir, caplog):
    d, _, _ = ltx2_dir
    path = os.path.join(d, "clip_a_ltx2_te.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.data"):
        bm = BatchManager([CacheSource(d)], "av")
    assert bm.num_items == 2
    left = [r.getMessage() for r in caplog.records if r.getMessage().startswith("left out of training")]
    assert len(left) == 2 and all("clip_a_ltx2_te.safetensors" in m for m in left)


def _arrow_cache(d, ref, stats):
    """The same items as our cache jobs store them (raw latents, text per item)."""
    rows_to_stores(d, "video", ({"key": k, "fingerprint": "f", **tensor_to_columns("latents", r["raw"]), "fps": r["fps"],
                                 "width": 96, "height": 64, "num_frames": 9, "source": "x"} for k, r in ref.items()))
    rows_to_stores(d, "audio", ({"key": k, "fingerprint": "f", **tensor_to_columns("audio_latents", r["audio"]),
                                 "audio_lengths": 6, "sample_rate": 16000, "width": 96, "height": 64, "source": "x"}
                                for k, r in ref.items()))
    rows_to_stores(d, "text", ({"key": k, "fingerprint": "f", **tensor_to_columns("text", r["text"][0]),
                                **tensor_to_columns("text_mask", r["text"][1].bool()), "caption": r["text"][2]}
                               for k, r in ref.items()))


def test_export_is_found_in_full_by_musubis_loader_rules(ltx2_dir, tmp_path):
    _, ref, stats = ltx2_dir
    arrow = str(tmp_path / "arrow")
    _arrow_cache(arrow, ref, stats)
    out = str(tmp_path / "musubi")
    counts = musubi.export_arrow_to_musubi(arrow, out, naming="ltx2", stats=stats, video_width=24)
    assert counts == {"video": 4, "audio": 4, "text": 2}  # one text cache per video
    found = musubi_loader_items(out)
    assert sorted(found) == sorted(f"{k}_0096x0064_ltx2.safetensors" for k in ref)
    assert all(audio is not None and frames == 9 for _, audio, frames in found.values())
    for key, r in ref.items():
        name = f"{key}_0096x0064_ltx2.safetensors"
        te, audio, _ = found[name]
        with safe_open(os.path.join(out, name), "pt") as f:
            meta, keys = f.metadata(), list(f.keys())
        assert keys == ["latents_2x2x3_float32"] and meta["architecture"] == "ltx2_v1"
        assert float(meta["target_fps"]) == r["fps"] and meta["frame_count"] == "9"
        v = load_file(os.path.join(out, name))["latents_2x2x3_float32"]
        assert torch.allclose(v, stats.normalize_video(r["raw"]), atol=1e-6)
        a = load_file(audio)
        assert sorted(a) == ["audio_latents_7x16x8_float32", "audio_lengths_int32"] and int(a["audio_lengths_int32"]) == 6
        t = load_file(te)
        assert torch.equal(t["text_bfloat16"], r["text"][0]) and t["text_mask"].tolist() == r["text"][1].tolist()
        assert torch.equal(t["video_prompt_embeds_bfloat16"], r["text"][0][:, :24])  # musubi's split form too
        assert torch.equal(t["audio_prompt_embeds_bfloat16"], r["text"][0][:, 24:])
        assert t["prompt_attention_mask"].tolist() == r["text"][1].tolist()
    # and back: the export reads as the Arrow rows it came from
    bm = BatchManager([CacheSource(out)], "av", text_dims=(24, 24))
    b = bm.collate([(0, "other_00009-009")])
    assert torch.allclose(stats.denormalize_video(b["latents"][0]), ref["other_00009-009"]["raw"], atol=1e-5)
    assert b["fps"].tolist() == [30.0]


def test_export_refuses_what_musubi_cannot_hold(ltx2_dir, tmp_path):
    _, ref, stats = ltx2_dir
    arrow = str(tmp_path / "arrow")
    _arrow_cache(arrow, ref, stats)
    with pytest.raises(ValueError, match="pass --vae"):
        musubi.export_arrow_to_musubi(arrow, str(tmp_path / "x"), naming="ltx2")
    rows_to_stores(arrow, "text", [{"key": "clip_a_00009-009", "fingerprint": "g",
                                    **tensor_to_columns("text", _t(6, 48, seed=7)),
                                    **tensor_to_columns("text_mask", torch.ones(6, dtype=torch.bool)), "caption": "c"}])
    with pytest.raises(ValueError, match="one media file but have different text"):
        musubi.export_arrow_to_musubi(arrow, str(tmp_path / "y"), naming="ltx2", stats=stats)
    counts = musubi.export_arrow_to_musubi(arrow, str(tmp_path / "z"), naming="ltxv2")  # per-item text: fine
    assert counts["text"] == 4 and not musubi_loader_items(str(tmp_path / "z"))  # musubi today looks for _ltx2
    assert len(musubi_loader_items(str(tmp_path / "z"), architecture="ltxv2")) == 0  # nor per-item text


def test_import_to_arrow_denormalizes(ltx2_dir, tmp_path):
    d, ref, stats = ltx2_dir
    with pytest.raises(ValueError, match="pass --vae"):
        musubi.import_musubi_to_arrow(d, str(tmp_path / "a"))
    counts = musubi.import_musubi_to_arrow(d, str(tmp_path / "b"), stats=stats)
    assert counts == {"video": 4, "audio": 4, "text": 4}  # every window gets its video's text
    video = CacheStore(str(tmp_path / "b"), "video")
    row = video.read(video.index()["other_00000-009"])
    assert torch.allclose(row["latents"], ref["other_00000-009"]["raw"], atol=1e-5) and row["fps"] == 30.0


def test_musubis_own_dataset_loader_trains_on_the_export(ltx2_dir, tmp_path, monkeypatch):
    """Runs only where musubi-tuner's source is importable (not in CI: its licence keeps it out of the project).
    Its dataset module imports OpenCV at the top, which reading caches never uses: an empty stand-in is given
    when OpenCV is not installed."""
    import importlib.util
    import multiprocessing
    import sys
    import types

    if importlib.util.find_spec("musubi_tuner") is None:
        pytest.skip("musubi-tuner's source is not importable (PYTHONPATH=<musubi-tuner>/src)")
    if importlib.util.find_spec("cv2") is None:
        monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    from musubi_tuner.dataset.image_video_dataset import VideoDataset

    _, ref, stats = ltx2_dir
    arrow, out = str(tmp_path / "arrow"), str(tmp_path / "musubi")
    _arrow_cache(arrow, ref, stats)
    musubi.export_arrow_to_musubi(arrow, out, naming="ltx2", stats=stats, video_width=24)
    ds = VideoDataset(resolution=(96, 64), caption_extension=".txt", batch_size=1, num_repeats=1, enable_bucket=False,
                      bucket_no_upscale=False, cache_directory=out, cache_only=True, architecture="ltx2")
    ds.prepare_for_training()
    ds.set_seed(0, multiprocessing.Value("i", 1))
    assert len(ds) == len(ref)
    seen = {}
    for i in range(len(ds)):
        item = ds[i]
        seen.setdefault(item["captions"][0], []).append(item)
        assert item["latents"]["latents"].shape == (1, 128, 2, 2, 3)
        assert item["audio_latents"]["latents"].shape == (1, 8, 7, 16) and item["audio_lengths"].tolist() == [6]
        assert item["conditions"]["video_prompt_embeds"].shape == (1, 6, 24)
        assert item["conditions"]["audio_prompt_embeds"].shape == (1, 6, 24)
    assert sorted(seen) == ["caption clip_a", "caption other"] and all(len(v) == 2 for v in seen.values())


def test_musubis_example_dataset_config(tmp_path):
    """docs/ltx_2.md "Example TOML": `cache_directory` in [general] is read; `target_fps` is named as unsupported."""
    from ltxv2_diffusers.data.config import DatasetConfigError, load_dataset_config

    (tmp_path / "videos").mkdir()
    example = ('[general]\nresolution = [768, 512]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = true\n'
               'cache_directory = "cache"\n\n[[datasets]]\nvideo_directory = "videos"\ntarget_frames = [1, 17, 33, 49]\n')
    config = tmp_path / "dataset.toml"
    config.write_text(example, encoding="utf-8")
    entry = load_dataset_config(config).datasets[0]
    assert entry.cache_directory.endswith("cache") and entry.batch_size == 1
    config.write_text(example + "target_fps = 25\n", encoding="utf-8")
    with pytest.raises(DatasetConfigError, match="key 'target_fps' is not supported: frames are taken at the source"):
        load_dataset_config(config)
