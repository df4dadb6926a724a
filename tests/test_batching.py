"""Batch manager over real Arrow caches: joins, buckets, batch sizes/repeats, seeded order, errors."""

import pytest
import torch

from ltxv2_diffusers.data.batching import BatchManager, CacheSource
from ltxv2_diffusers.data.config import load_dataset_config
from ltxv2_diffusers.data.stores import CacheStore, tensor_to_columns
from ltxv2_diffusers.data.synthetic import make_dataset


def write_cache(cache_dir, items, kinds=("video", "audio", "text")):
    """items: key -> dict(latents=(F,H,W), fa=int, length=int, width=int)."""
    rows = {k: [] for k in kinds}
    for key, spec in items.items():
        g = torch.Generator().manual_seed(hash(key) % 1000)
        if "video" in kinds:
            lat = torch.randn(128, *spec.get("latents", (2, 2, 2)), generator=g).bfloat16()
            rows["video"].append({"key": key, "fingerprint": "t", **tensor_to_columns("latents", lat), "fps": 25.0,
                                  "width": 64, "height": 64, "num_frames": 9, "source": key})
        if "audio" in kinds:
            fa = spec.get("fa", 5)
            rows["audio"].append({"key": key, "fingerprint": "t",
                                  **tensor_to_columns("audio_latents", torch.randn(8, fa, 16, generator=g)),
                                  "audio_lengths": fa - 1, "sample_rate": 16000, "width": 64, "height": 64,
                                  "source": key})
        if "text" in kinds:
            length, width = spec.get("length", 8), spec.get("width", 48)
            mask = torch.arange(length) < length - 2
            rows["text"].append({"key": key, "fingerprint": "t",
                                 **tensor_to_columns("text", torch.randn(length, width, generator=g)),
                                 **tensor_to_columns("text_mask", mask), "caption": key})
    for kind, r in rows.items():
        CacheStore(cache_dir, kind).write_shard(r)
    return str(cache_dir)


@pytest.fixture
def two_datasets(tmp_path):
    a = write_cache(tmp_path / "a", {"a0": {}, "a1": {}, "a2": {}, "big": {"latents": (3, 2, 4)}})
    b = write_cache(tmp_path / "b", {"b0": {}, "b1": {}})
    return [CacheSource(a, batch_size=2, num_repeats=2), CacheSource(b, batch_size=1, num_repeats=1)]


def test_buckets_batch_sizes_and_repeats(two_datasets):
    bm = BatchManager(two_datasets, "av", seed=3, text_dims=(24, 24))
    plan = bm.epoch_plan(0)
    assert len(bm) == len(plan) == 3 + 1 + 2  # a: 3 small x2 -> 3 batches, big x2 -> 1; b: 2 of 1
    seen = {}
    for refs in plan:
        sources = {si for si, _ in refs}
        assert len(sources) == 1  # never mixes datasets
        assert len(refs) == (2 if sources == {0} else 1)
        for _, key in refs:
            seen[key] = seen.get(key, 0) + 1
    assert seen == {"a0": 2, "a1": 2, "a2": 2, "big": 2, "b0": 1, "b1": 1}
    for batch in bm.iter_epoch(0):
        assert batch["latents"].dim() == 5 and batch["latents"].dtype == torch.bfloat16
        assert ("big" in batch["keys"]) == (batch["latents"].shape[2:] == (3, 2, 4))
        assert batch["fps"].tolist() == [25.0] * len(batch["keys"])


def test_order_is_a_function_of_seed_and_epoch_and_resume_skips(two_datasets):
    one = BatchManager(two_datasets, "video", seed=7)
    two = BatchManager(two_datasets, "video", seed=7)
    assert one.epoch_plan(4) == two.epoch_plan(4)
    assert one.epoch_plan(0) != one.epoch_plan(1) or one.epoch_plan(1) != one.epoch_plan(2)
    assert BatchManager(two_datasets, "video", seed=8).epoch_plan(0) != one.epoch_plan(0) or \
        BatchManager(two_datasets, "video", seed=9).epoch_plan(0) != one.epoch_plan(0)
    resumed = [b["keys"] for b in one.iter_epoch(2, start=4)]
    assert resumed == [[k for _, k in refs] for refs in one.epoch_plan(2)[4:]]
    step = 2 * len(one) + 4
    assert one.position(step) == (2, 4)
    stream = one.iter_from_step(step)
    assert [next(stream)["keys"] for _ in range(len(resumed) + 1)] == resumed + [
        [k for _, k in one.epoch_plan(3)[0]]]


def test_collate_pads_text_and_audio_and_keeps_masks(tmp_path):
    d = write_cache(tmp_path, {"x": {"length": 8, "fa": 5}, "y": {"length": 16, "fa": 7}})
    bm = BatchManager([CacheSource(d, batch_size=2)], "av", text_dims=(24, 24))
    batch = bm.collate([(0, "x"), (0, "y")])
    assert batch["keys"] == ["x", "y"]
    assert batch["text"].shape == (2, 16, 48) and batch["text_mask"].dtype == torch.bool
    assert batch["text_mask"].sum(1).tolist() == [6, 14]
    assert (batch["text"][0, 8:] == 0).all()
    assert batch["audio_latents"].shape == (2, 8, 7, 16) and (batch["audio_latents"][0, :, 5:] == 0).all()
    assert batch["audio_lengths"].tolist() == [4, 6] and batch["audio_lengths"].dtype == torch.int64
    stored = CacheStore(d, "text")
    torch.testing.assert_close(batch["text"][1], stored.read(stored.index()["y"])["text"])


def test_audio_mode_batches_audio_only(tmp_path):
    d = write_cache(tmp_path, {"x": {"fa": 5}, "y": {"fa": 7}, "z": {"fa": 5}}, kinds=("audio", "text"))
    bm = BatchManager([CacheSource(d, batch_size=4)], "audio")
    batches = list(bm.iter_epoch(0))
    assert sorted(len(b["keys"]) for b in batches) == [1, 2]  # bucketed by audio length
    assert all("latents" not in b and b["audio_latents"].shape[1] == 8 for b in batches)


def test_missing_sources_name_the_item_and_the_command(tmp_path):
    d = write_cache(tmp_path / "noaudio", {"x": {}}, kinds=("video", "text"))
    with pytest.raises(ValueError, match=r"'x' .* no cached audio latents .*ltxv2-cache-audio-latents"):
        BatchManager([CacheSource(d)], "av", dataset_config="data.toml")
    assert len(BatchManager([CacheSource(d)], "video")) == 1

    d = write_cache(tmp_path / "notext", {"x": {}, "y": {}}, kinds=("video", "audio"))
    with pytest.raises(ValueError, match=r"item 'x', 'y' in .*notext has no cached text embeddings.*"
                                         r"run ltxv2-cache-text-encoder-outputs --dataset_config data.toml"):
        BatchManager([CacheSource(d)], "video", dataset_config="data.toml")

    d = write_cache(tmp_path / "novideo", {"x": {}}, kinds=("audio", "text"))
    with pytest.raises(ValueError, match="no cached video latents.*ltxv2-cache-latents"):
        BatchManager([CacheSource(d)], "video")
    assert len(BatchManager([CacheSource(d)], "audio")) == 1


def test_text_width_must_fit_the_model(tmp_path):
    video_layout = write_cache(tmp_path / "v", {"x": {"width": 24}})
    with pytest.raises(ValueError, match="video-only layout .*--ltxv2_audio_video"):
        BatchManager([CacheSource(video_layout)], "av", text_dims=(24, 24))
    assert len(BatchManager([CacheSource(video_layout)], "video", text_dims=(24, 24))) == 1
    t5_like = write_cache(tmp_path / "t5", {"x": {"width": 32}})
    with pytest.raises(ValueError, match="fits neither the video layout \\(24\\) nor the audio\\+video layout "
                                         "\\(48\\).*--text_encoder_backend"):
        BatchManager([CacheSource(t5_like)], "video", text_dims=(24, 24))
    av_layout = write_cache(tmp_path / "av", {"x": {"width": 48}})
    assert len(BatchManager([CacheSource(av_layout)], "video", text_dims=(24, 24))) == 1
    with pytest.raises(ValueError, match="different widths are mixed"):
        BatchManager([CacheSource(av_layout), CacheSource(t5_like)], "video")


def test_from_config_uses_batch_size_and_num_repeats(tmp_path):
    toml = make_dataset(tmp_path, num_videos=1, batch_size=2, num_repeats=3)
    config = load_dataset_config(toml)
    write_cache(config.datasets[0].cache_directory, {"p": {}, "q": {}, "r": {}})
    bm = BatchManager.from_config(config, "video")
    assert len(bm) == 5  # 3 items x 3 repeats = 9 -> batches of 2
    assert sorted(len(refs) for refs in bm.epoch_plan(0)) == [1, 2, 2, 2, 2]


def test_batch_size_is_per_process_and_uneven_remainders_are_dropped(tmp_path):
    toml = make_dataset(tmp_path, num_videos=1, batch_size=2, num_repeats=3)
    config = load_dataset_config(toml)
    write_cache(config.datasets[0].cache_directory, {"p": {}, "q": {}, "r": {}})
    bm = BatchManager.from_config(config, "video", processes=2)
    plan = bm.epoch_plan(0)
    # 9 items, global batch 2 x 2 = 4: two full batches; the remainder of 1 cannot split over 2 processes.
    assert [len(refs) for refs in plan] == [4, 4] and len(bm) == 2
    assert bm.items_dropped_per_epoch() == 1
    bm3 = BatchManager.from_config(config, "video", processes=3)
    # global batch 6: one full batch and a remainder of 3, which splits one per process.
    assert sorted(len(refs) for refs in bm3.epoch_plan(0)) == [3, 6] and len(bm3) == 2
    assert bm3.items_dropped_per_epoch() == 0
    assert BatchManager.from_config(config, "video").items_dropped_per_epoch() == 0
