"""Item listing on real media: keys, windows per extraction mode, audio sources, and bad files reported."""

from __future__ import annotations

import dataclasses
import pickle
import shutil

import datasets
import pytest

from ltxv2_diffusers.data import synthetic
from ltxv2_diffusers.data.config import DatasetEntry, load_dataset_config
from ltxv2_diffusers.data.items import (
    Item,
    frame_windows,
    list_items,
    load_audio,
    load_audio_waveform,
    load_video_frames,
)


def _entry(**overrides) -> DatasetEntry:
    values = dict(index=0, video_directory="/v", image_directory=None, audio_directory=None, cache_directory="/c",
                  caption_extension=".txt", resolution=(64, 32), target_frames=(9,), frame_extraction="head",
                  frame_stride=1, frame_sample=1, max_frames=129, batch_size=1, num_repeats=1,
                  enable_bucket=False, bucket_no_upscale=False)
    values.update(overrides)
    return DatasetEntry(**values)


@pytest.mark.parametrize(
    "mode, keys, expected",
    [
        ("head", {}, [(0, 9), (0, 17)]),
        ("chunk", {}, [(0, 9), (9, 9), (18, 9), (27, 9), (0, 17), (17, 17)]),
        ("slide", {"frame_stride": 10}, [(0, 9), (10, 9), (20, 9), (30, 9), (0, 17), (10, 17), (20, 17)]),
        ("uniform", {"frame_sample": 3}, [(0, 9), (15, 9), (31, 9), (0, 17), (11, 17), (23, 17)]),
        ("full", {}, [(0, 33)]),
        ("full", {"max_frames": 20}, [(0, 17)]),
    ],
)
def test_frame_windows_follow_musubi(mode, keys, expected):
    entry = _entry(frame_extraction=mode, target_frames=(9, 17), **keys)
    assert frame_windows(40, entry) == expected
    assert frame_windows(8, entry) == ([(0, 1)] if mode == "full" else [])


def test_frame_windows_are_unique():
    # 11 frames leave starts 0..2 for 9-frame windows: 5 uniform samples would repeat some
    assert frame_windows(11, _entry(frame_extraction="uniform", frame_sample=5)) == [(0, 9), (1, 9), (2, 9)]
    assert frame_windows(20, _entry(target_frames=(9, 9))) == [(0, 9)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two good clips (one with its own aac track, one silent with a wav beside it), an image set, and
    an audio_directory holding a same-name file that must win over the clip's own track."""
    root = tmp_path_factory.mktemp("items")
    videos, audio_dir = root / "videos", root / "audio"
    a = synthetic.write_video(videos / "a.mp4", 30, (128, 64), 24, "h264")
    b = synthetic.write_video(videos / "b.mp4", 26, (128, 64), 25, "mpeg4", audio=False)
    synthetic.write_audio(videos / "b.wav", 1.2, 48000, 1)
    synthetic.write_audio(audio_dir / "a.flac", 1.5, 44100, 2)
    for clip, text in ((a, "clip a"), (b, "clip b\n")):
        synthetic.write_caption(clip, text)
    for i in range(2):
        synthetic.write_caption(synthetic.write_image(root / "images" / f"img{i}.jpg", (96, 64), index=i), f"img {i}")
    toml = synthetic.write_dataset_toml(root / "dataset.toml", [
        dict(video_directory=str(videos), audio_directory=str(audio_dir), cache_directory=str(root / "cache_v"),
             resolution=[64, 32], target_frames=[9], frame_extraction="chunk"),
        dict(image_directory=str(root / "images"), cache_directory=str(root / "cache_i"), resolution=[64, 64],
             enable_bucket=True),
    ])
    return root, load_dataset_config(toml)


def test_listing_keys_windows_and_fields(dataset):
    root, config = dataset
    result = list_items(config, "video")
    assert result.bad == []
    keys = [item.key for item in result.items]
    # musubi's cache basenames: the stem plus `_{start:05d}-{frames:03d}` for every video window.
    # a has 30 frames (chunks at 0, 9, 18), b has 26 (chunks at 0, 9: a third would end at 27)
    assert keys == ["a_00000-009", "a_00009-009", "a_00018-009", "b_00000-009", "b_00009-009", "img0", "img1"]
    first, b_item, image = result.items[0], result.items[3], result.items[5]
    assert (first.caption, first.fps, first.bucket, first.num_frames) == ("clip a", 24.0, (64, 32), 9)
    assert first.cache_directory == str(root / "cache_v") and first.dataset_index == 0
    assert first.audio_path == str(root / "audio" / "a.flac")  # audio_directory wins over the own track
    assert b_item.caption == "clip b" and b_item.fps == 25.0 and b_item.audio_path == str(root / "videos" / "b.wav")
    assert image.is_image and image.num_frames == 1 and image.key == "img0" and image.audio_path is None
    assert image.cache_directory == str(root / "cache_i")
    # buckets of about 64x64 in steps of 32 are 32x128, 64x64, 128x32: a 3:2 source is nearest 64x64
    assert image.bucket == (64, 64)
    assert first.latent_cache_basename == "a_00000-009_0064x0032_ltxv2"


def test_items_round_trip_through_datasets_and_pickle(dataset):
    _, config = dataset
    items = list_items(config, "video").items
    table = datasets.Dataset.from_list([item.to_dict() for item in items])
    assert [Item.from_dict(row) for row in table] == items
    assert pickle.loads(pickle.dumps(items)) == items


def test_loading_an_item_gives_its_window(dataset):
    _, config = dataset
    item = list_items(config, "av").items[1]  # a_00009-009
    frames = load_video_frames(item)
    assert frames.shape == (9, 3, 32, 64)
    assert [synthetic.read_frame_index(f.numpy()) for f in frames] == list(range(9, 18))
    clip = load_audio(item)
    assert clip.waveform.shape == (2, round(9 / 24 * 16000)) and clip.num_valid_samples == clip.waveform.shape[1]
    assert load_audio_waveform(item, sample_rate=24000).shape == (2, round(9 / 24 * 24000))


def test_av_mode_reports_bad_files_and_keeps_good_ones(dataset, tmp_path):
    root, _ = dataset
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos)
    (videos / "b.wav").unlink()  # b now has no audio at all
    good = videos / "a.mp4"
    (videos / "junk.mp4").write_bytes(b"\x00definitely not a video" * 64)
    (videos / "cut.mp4").write_bytes(good.read_bytes()[:2500])
    synthetic.write_video(videos / "short.mp4", 5, (128, 64), 24, "h264")
    synthetic.write_video(videos / "nocaption.mp4", 12, (128, 64), 24, "h264")
    synthetic.write_video(videos / "silent.mp4", 12, (128, 64), 24, "h264", audio=False)
    synthetic.write_audio(videos / "silent.wav", 0.0, 16000, 1)
    for name in ("junk", "cut", "short", "silent"):
        synthetic.write_caption(videos / f"{name}.mp4", name)
    toml = synthetic.write_dataset_toml(tmp_path / "dataset.toml", [
        dict(video_directory=str(videos), cache_directory=str(tmp_path / "cache"), resolution=[64, 32],
             target_frames=[9])])
    config = load_dataset_config(toml)

    result = list_items(config, "av")
    assert [item.key for item in result.items] == ["a_00000-009"]
    reasons = {path.rsplit("/", 1)[-1]: reason for path, reason in result.bad}
    assert set(reasons) == {"b.mp4", "cut.mp4", "junk.mp4", "nocaption.mp4", "short.mp4", "silent.wav"}
    assert "no audio" in reasons["b.mp4"]
    assert "unreadable" in reasons["junk.mp4"] and "unreadable" in reasons["cut.mp4"]
    assert "missing caption nocaption.txt" in reasons["nocaption.mp4"]
    assert "5 frames" in reasons["short.mp4"] and "at least 9" in reasons["short.mp4"]
    assert "zero length" in reasons["silent.wav"]
    summary = result.summary().splitlines()
    assert summary[0] == "1 items, 6 skipped files" and any("short.mp4" in line for line in summary[1:])

    # video mode needs no audio: the silent ones become good items, the broken files stay bad.
    video_result = list_items(config, "video")
    assert {item.key for item in video_result.items} == {"a_00000-009", "b_00000-009", "silent_00000-009"}
    assert {path.rsplit("/", 1)[-1] for path, _ in video_result.bad} == {"cut.mp4", "junk.mp4", "nocaption.mp4", "short.mp4"}
    # listing is deterministic, so every job reports the same bad items
    assert list_items(config, "video") == video_result


def test_audio_shorter_than_video_drops_late_windows(tmp_path):
    videos = tmp_path / "v"
    clip = synthetic.write_video(videos / "c.mp4", 40, (128, 64), 24, "h264", audio_seconds=0.5)
    synthetic.write_caption(clip, "c")
    toml = synthetic.write_dataset_toml(tmp_path / "d.toml", [
        dict(video_directory=str(videos), resolution=[64, 32], target_frames=[9], frame_extraction="chunk")])
    result = list_items(load_dataset_config(toml), "av")
    # audio ends at 0.5 s = frame 12: windows starting at 0 and 9 have audio, 18 and 27 do not
    assert [item.key for item in result.items] == ["c_00000-009", "c_00009-009"] and result.bad == []
    tail = load_audio(result.items[1])
    assert tail.num_valid_samples < tail.waveform.shape[1]


def test_image_datasets_have_no_audio_in_av_mode(dataset):
    _, config = dataset
    image_only = dataclasses.replace(config, datasets=config.datasets[1:])
    result = list_items(image_only, "av")
    assert result.items == [] and all("image has no audio" in reason for _, reason in result.bad)


def test_broken_sidecar_audio_only_matters_when_audio_is_trained(tmp_path):
    videos = tmp_path / "v"
    clip = synthetic.write_video(videos / "d.mp4", 12, (128, 64), 24, "h264", audio=False)
    synthetic.write_caption(clip, "d")
    (videos / "d.wav").write_bytes(b"RIFF junk that is not audio" * 8)
    toml = synthetic.write_dataset_toml(tmp_path / "d.toml", [
        dict(video_directory=str(videos), resolution=[64, 32], target_frames=[9])])
    config = load_dataset_config(toml)
    video = list_items(config, "video")
    assert [item.key for item in video.items] == ["d_00000-009"] and not video.items[0].has_audio
    av_mode = list_items(config, "av")
    assert av_mode.items == [] and av_mode.bad[0][0] == str(videos / "d.wav")


def test_files_with_the_same_stem_are_reported(tmp_path):
    videos = tmp_path / "v"
    for ext in (".mp4", ".mkv"):
        clip = synthetic.write_video(videos / f"same{ext}", 9, (128, 64), 24, "mpeg4", audio=False)
    synthetic.write_caption(clip, "shared caption")  # one caption serves both stems
    toml = synthetic.write_dataset_toml(tmp_path / "d.toml", [dict(video_directory=str(videos), resolution=[64, 32],
                                                                   target_frames=[9])])
    result = list_items(load_dataset_config(toml), "video")
    assert [item.video_path for item in result.items] == [str(videos / "same.mkv")]
    assert result.bad == [(str(videos / "same.mp4"), "same name as same.mkv in one cache directory; rename one of them")]
