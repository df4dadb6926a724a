"""Caching map jobs on real PyAV media, tiny real VAEs and a tiny Gemma-3: outputs, resume, bad items."""

import os
import shutil

import pytest
import torch

from ltxv2_diffusers.data.config import load_dataset_config
from ltxv2_diffusers.data.items import list_items, load_audio, load_video_frames
from ltxv2_diffusers.data.encoders import AudioLatentEncoder, TextEmbeddingEncoder, VideoLatentEncoder
from ltxv2_diffusers.data.jobs import pending_items, run_cache_job
from ltxv2_diffusers.data.mel import log_mel
from ltxv2_diffusers.data.stores import CacheStore
from ltxv2_diffusers.data.synthetic import make_dataset, write_caption, write_video
from ltxv2_diffusers.models.loading import save_official_checkpoint
from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.text.tiny import write_tiny_gemma


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny VAEs + connectors saved as one official LTX-2 single file, and a tiny Gemma-3 folder."""
    root = tmp_path_factory.mktemp("models")
    comps = build_components("tiny", components=("vae", "audio_vae", "connectors"))
    ltx = save_official_checkpoint(root / "ltx-2-tiny.safetensors", **comps)
    return {"ltx": ltx, "gemma": write_tiny_gemma(root / "gemma"), **comps}


@pytest.fixture
def dataset(tmp_path):
    toml = make_dataset(tmp_path, num_videos=2, num_frames=25, target_frames=(9, 17))
    return load_dataset_config(toml)


def _rows(cache_dir, kind):
    store = CacheStore(cache_dir, kind)
    return {key: store.read(i) for key, i in store.index().items()}


def test_video_audio_text_jobs_store_what_the_models_compute(dataset, models):
    listing = list_items(dataset, "av")
    assert [it.key for it in listing.items] == ["clip00_00000-009", "clip00_00000-017",
                                                "clip01_00000-009", "clip01_00000-017"]
    cache = listing.items[0].cache_directory

    video = run_cache_job(listing.items, VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32"), batch_size=3)
    assert (video.cached, video.skipped, video.bad) == (4, 0, [])
    assert len(video.shards) == 2  # one shard per map batch: written as the job goes
    rows = _rows(cache, "video")
    with torch.no_grad():
        for item in listing.items:
            frames = load_video_frames(item).permute(1, 0, 2, 3)[None]
            expected = models["vae"].encode(frames).latent_dist.mean[0]
            torch.testing.assert_close(rows[item.key]["latents"], expected)
            assert rows[item.key]["fps"] == 24.0 and (rows[item.key]["width"], rows[item.key]["height"]) == (64, 64)
    assert rows["clip00_00000-017"]["latents"].shape == (128, 3, 2, 2)

    audio = run_cache_job(listing.items, AudioLatentEncoder(models["ltx"], device="cpu"), batch_size=4)
    assert (audio.cached, audio.bad) == (4, [])
    rows = _rows(cache, "audio")
    with torch.no_grad():
        item = listing.items[1]
        mel = log_mel(load_audio(item).waveform)
        expected = models["audio_vae"].encode(mel[None]).latent_dist.mean[0]
    torch.testing.assert_close(rows[item.key]["audio_latents"], expected)
    # 17 frames at 24 fps = 0.708 s -> 11333 samples -> 71 mel frames -> ceil(71/4) latent frames.
    assert rows[item.key]["audio_latents"].shape == (8, 18, 16) and rows[item.key]["audio_lengths"] == 18

    text = run_cache_job(listing.items, TextEmbeddingEncoder("gemma", models["gemma"], max_length=16,
                                                             connectors=models["ltx"], audio_video=True,
                                                             device="cpu"), batch_size=4)
    assert text.cached == 4
    rows = _rows(cache, "text")
    assert rows["clip01_00000-009"]["text"].shape == (16, 48)
    assert rows["clip01_00000-009"]["caption"] == listing.items[2].caption
    # Items of one video share a caption, hence one embedding.
    torch.testing.assert_close(rows["clip01_00000-009"]["text"], rows["clip01_00000-017"]["text"])


def test_rerun_skips_finished_items_and_fingerprints_follow_only_the_output(dataset, models, tmp_path):
    items = list_items(dataset, "video").items
    enc = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32")
    assert run_cache_job(items, enc, batch_size=4).cached == 4
    again = run_cache_job(items, VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32", decode_workers=1),
                          batch_size=1, num_proc=1)
    assert (again.cached, again.skipped) == (0, 4)  # batch size, workers: not part of the fingerprint

    # A changed dtype changes every item's fingerprint; a changed clip changes only its own items.
    assert VideoLatentEncoder(models["ltx"], dtype="bf16").fingerprint() != enc.fingerprint()
    assert VideoLatentEncoder(models["ltx"], dtype="fp32", tiling=True).fingerprint() != enc.fingerprint()
    clip = items[0].video_path
    os.utime(clip, (1, 1))
    todo, done = pending_items(list_items(dataset, "video").items, enc)
    assert sorted(it.key for it in todo) == ["clip00_00000-009", "clip00_00000-017"] and done == 2
    redo = run_cache_job(list_items(dataset, "video").items, enc, batch_size=4)
    assert (redo.cached, redo.skipped) == (2, 2)
    store = CacheStore(items[0].cache_directory, "video")
    assert len(store.index()) == 4 and len(store.shard_files()) == 2  # the older shard still serves clip01


def test_a_killed_job_keeps_finished_shards(dataset, models):
    items = list_items(dataset, "video").items

    class Dies(VideoLatentEncoder):
        calls = 0

        def encode_frames(self, frames, rank=None):
            type(self).calls += 1
            if type(self).calls == 3:
                raise KeyboardInterrupt  # as if the job were killed while encoding the third item
            return super().encode_frames(frames, rank)

    with pytest.raises(KeyboardInterrupt):
        run_cache_job(items, Dies(models["ltx"], device="cpu", dtype="fp32"), batch_size=2)
    store = CacheStore(items[0].cache_directory, "video")
    assert len(store.index()) == 2
    resumed = run_cache_job(items, VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32"), batch_size=2)
    assert (resumed.cached, resumed.skipped) == (2, 2)


def test_bad_items_are_reported_and_good_ones_cached(tmp_path, models):
    toml = make_dataset(tmp_path, num_videos=1, num_frames=25, target_frames=(9,))
    videos = tmp_path / "videos"
    write_caption(write_video(videos / "silent.mp4", 25, audio=False), "no sound here")
    write_video(videos / "nocaption.mp4", 25)
    broken = write_video(videos / "broken.mp4", 25)
    broken.write_bytes(broken.read_bytes()[:600])
    write_caption(broken, "a broken file")
    listing = list_items(load_dataset_config(toml), "av")
    assert [it.key for it in listing.items] == ["clip00_00000-009"]
    bad_files = sorted(os.path.basename(p) for p, _ in listing.bad)
    assert bad_files == ["broken.mp4", "nocaption.mp4", "silent.mp4"]

    report = run_cache_job(listing.items, AudioLatentEncoder(models["ltx"], device="cpu"),
                           listing_bad=listing.bad, batch_size=2)
    assert report.cached == 1 and len(report.bad) == 3
    summary = report.summary()
    assert "1 cached" in summary and "3 bad" in summary and "silent.mp4" in summary
    assert report.exit_code() == 0 and report.exit_code(strict=True) == 1

    # An item that fails while encoding (here: its file vanished after listing) is reported too.
    shutil.rmtree(listing.items[0].cache_directory)
    os.remove(listing.items[0].video_path)
    report = run_cache_job(listing.items, VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32"))
    assert report.cached == 0 and report.exit_code() == 1
    assert report.bad[0][0].endswith("clip00.mp4")


def test_two_map_workers_give_the_same_cache(dataset, models, tmp_path):
    """~16 s: two spawned workers import torch/diffusers (the path several GPUs take, one per rank)."""
    items = list_items(dataset, "video").items
    enc = TextEmbeddingEncoder("gemma", models["gemma"], max_length=16, connectors=models["ltx"], device="cpu")
    one = run_cache_job(items, enc, batch_size=1)
    rows_one = _rows(items[0].cache_directory, "text")
    shutil.rmtree(CacheStore(items[0].cache_directory, "text").path)
    two = run_cache_job(items, enc, batch_size=1, num_proc=2)
    rows_two = _rows(items[0].cache_directory, "text")
    assert one.cached == two.cached == 4
    for key in rows_one:
        assert torch.equal(rows_one[key]["text"], rows_two[key]["text"])


def test_temporal_chunking_and_tiling_options(dataset, models):
    item = [it for it in list_items(dataset, "video").items if it.num_frames == 17][0]
    frames = VideoLatentEncoder.decode(item)
    plain = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32")
    chunked = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32", chunk_size=16)
    a, b = plain.encode_frames(frames), chunked.encode_frames(frames)
    assert a.shape == b.shape == (128, 3, 2, 2) and torch.isfinite(b).all()
    assert chunked._m_vae.use_framewise_decoding  # diffusers' switch for temporally tiled encode
    assert chunked.fingerprint() != plain.fingerprint()
    with pytest.raises(ValueError, match="--vae_chunk_size 12"):
        VideoLatentEncoder(models["ltx"], chunk_size=12)
    with pytest.raises(ValueError, match="tile size 100"):
        VideoLatentEncoder(models["ltx"], tile_size=100)


def test_store_prune_keeps_only_current_rows_of_kept_items(tmp_path):
    from ltxv2_diffusers.data.stores import tensor_to_columns

    store = CacheStore(tmp_path, "text")

    def row(key, value):
        return {"key": key, "fingerprint": "f", "caption": key, **tensor_to_columns("text", torch.full((2, 3), value)),
                **tensor_to_columns("text_mask", torch.ones(2, dtype=torch.bool))}

    store.write_shard([row("a", 0.0), row("b", 0.0), row("gone", 0.0)])
    store.write_shard([row("b", 1.0)])  # a newer b supersedes the first
    assert store.prune({"a", "b"}) == 1
    assert sorted(store.index()) == ["a", "b"]
    assert store.read(store.index()["b"])["text"][0, 0] == 1.0  # the stale b was not resurrected
    assert store.prune({"a", "b"}) == 0


def _vae_that_fits_tiles_only(encoder, max_tile_pixels):
    """Fault injection on the real tiny VAE: its encoder network, given more than `max_tile_pixels`
    (frames x height x width) at once, runs out of GPU memory, as an untiled long clip does on a small card."""
    calls = {"failed": 0}

    def before_encoder(module, args, kwargs):
        x = args[0] if args else kwargs["sample"]
        if x.shape[2] * x.shape[3] * x.shape[4] > max_tile_pixels:
            calls["failed"] += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 12.00 GiB (injected)")

    encoder._model(None).encoder.register_forward_pre_hook(before_encoder, with_kwargs=True)
    return calls


def test_a_clip_too_large_for_the_gpu_untiled_is_encoded_in_tiles(tmp_path, models, caplog):
    """The 33-frame clips do not fit untiled but do in diffusers' 17-frame chunks: they are encoded in tiles,
    with one warning naming the clip and --vae_tiling; the second such clip goes straight to tiles. The tiled
    latents are those of an encoder run with --vae_tiling --vae_chunk_size 16."""
    dataset = load_dataset_config(make_dataset(tmp_path, num_videos=2, num_frames=33, target_frames=(9, 33)))
    items = list_items(dataset, "video").items
    encoder = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32")
    calls = _vae_that_fits_tiles_only(encoder, 17 * 64 * 64)
    with caplog.at_level("WARNING", logger="ltxv2_diffusers.data.encoders"):
        report = run_cache_job(items, encoder, batch_size=4)
    assert report.cached == 4 and not report.bad
    assert calls["failed"] == 1  # the next clip as large skipped the untiled try
    warnings = [r.getMessage() for r in caplog.records if "did not fit the GPU untiled" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith("33 frames of 64x64 did not fit the GPU untiled; encoding "
                                                       "clips this large in tiles (pass --vae_tiling to tile every clip)")
    vae = encoder._model(None)
    assert not vae.use_tiling and not vae.use_framewise_decoding  # the VAE's own settings are back

    long_item = next(item for item in items if item.num_frames == 33)
    tiled = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32", tiling=True, chunk_size=16)
    expected = tiled.encode_frames(VideoLatentEncoder.decode(long_item))
    row = _rows(items[0].cache_directory, "video")[long_item.key]
    assert torch.equal(row["latents"], expected)
    untiled = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32").encode_frames(
        VideoLatentEncoder.decode(long_item))
    assert not torch.equal(untiled, expected)  # the check above tells tiled from untiled latents


def test_a_clip_too_large_for_the_gpu_even_in_tiles_is_reported_with_what_to_do(dataset, models):
    items = list_items(dataset, "video").items
    encoder = VideoLatentEncoder(models["ltx"], device="cpu", dtype="fp32")
    _vae_that_fits_tiles_only(encoder, 9 * 64 * 64)  # nothing larger than the 9-frame clips fits
    report = run_cache_job(items, encoder, batch_size=4)
    assert report.cached == 2 and len(report.bad) == 2
    for path, reason in report.bad:
        assert path.endswith(".mp4")
        assert reason == ("the GPU ran out of memory encoding 17 frames of 64x64, also in tiles; use smaller tiles "
                          "(--vae_spatial_tile_sample_min_size 256, --vae_chunk_size 16) or smaller buckets")
    assert sorted(_rows(items[0].cache_directory, "video")) == ["clip00_00000-009", "clip01_00000-009"]


def test_captions_out_of_gpu_memory_name_the_batch_size(dataset, models):
    items = list_items(dataset, "video").items
    encoder = TextEmbeddingEncoder("gemma", models["gemma"], max_length=16, connectors=models["ltx"], device="cpu")

    def out_of_memory(prompts, rank=None):
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

    encoder.encode_prompts = out_of_memory
    report = run_cache_job(items, encoder, batch_size=4)
    assert report.cached == 0 and len(report.bad) == 4
    assert {reason for _, reason in report.bad} == {
        "ValueError: the GPU ran out of memory encoding 4 captions at once; pass a smaller --batch_size"}
