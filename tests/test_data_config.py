"""dataset.toml parsing: musubi defaults and precedence, and errors that name the key and the file."""

from __future__ import annotations

import pytest

from ltxv2_diffusers.data.config import DatasetConfigError, load_dataset_config
from ltxv2_diffusers.data.synthetic import write_dataset_toml


@pytest.fixture
def dirs(tmp_path):
    for name in ("videos", "images", "audio"):
        (tmp_path / name).mkdir()
    return tmp_path


def _write(tmp_path, text: str):
    path = tmp_path / "dataset.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_general_defaults_and_dataset_overrides(dirs):
    path = write_dataset_toml(
        dirs / "dataset.toml",
        general=dict(resolution=[768, 512], caption_extension=".caption", batch_size=2, enable_bucket=True,
                     target_frames=[17], frame_extraction="chunk"),
        datasets=[
            dict(video_directory=str(dirs / "videos"), audio_directory=str(dirs / "audio"),
                 cache_directory=str(dirs / "cache_v"), target_frames=[9, 121], num_repeats=3),
            dict(image_directory=str(dirs / "images"), resolution=256),
        ],
    )
    config = load_dataset_config(path)
    video, image = config.datasets
    assert video.resolution == (768, 512) and video.batch_size == 2 and video.enable_bucket
    assert video.target_frames == (9, 121) and video.frame_extraction == "chunk" and video.num_repeats == 3
    assert video.caption_extension == ".caption" and video.audio_directory == str(dirs / "audio")
    assert video.cache_directory == str(dirs / "cache_v") and not video.is_image_dataset
    # musubi defaults: stride/sample 1, max_frames 129; images are one frame whatever [general] says.
    assert (video.frame_stride, video.frame_sample, video.max_frames, video.bucket_no_upscale) == (1, 1, 129, False)
    assert image.is_image_dataset and image.resolution == (256, 256) and image.target_frames == (1,)
    # cache_directory defaults to the media directory, as in musubi.
    assert image.cache_directory == str(dirs / "images")


def test_relative_paths_resolve_against_config_folder(dirs, monkeypatch, tmp_path_factory):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    path = _write(dirs, '[[datasets]]\nvideo_directory = "videos"\ncache_directory = "cache"\n')
    entry = load_dataset_config(path).datasets[0]
    assert entry.video_directory == str(dirs / "videos")
    assert entry.cache_directory == str(dirs / "cache")


@pytest.mark.parametrize(
    "body, needles",
    [
        ('[[datasets]]\nvideo_directory = "videos"\nresolutoin = [512, 512]\n', ["resolutoin", "unknown key"]),
        ('[general]\nlearning_rate = 1.0\n[[datasets]]\nvideo_directory = "videos"\n', ["learning_rate", "[general]"]),
        ('[[datasets]]\nvideo_directory = "videos"\ntarget_frames = [16]\n', ["target_frames", "16", "8k+1"]),
        ('[[datasets]]\nvideo_directory = "videos"\nresolution = [500, 512]\n', ["resolution", "500", "multiple of 32"]),
        ('[[datasets]]\nvideo_directory = "nope"\n', ["video_directory", "'nope'", "not a directory"]),
        ('[[datasets]]\nvideo_directory = "videos"\naudio_directory = "missing_audio"\n', ["audio_directory"]),
        ('[[datasets]]\nvideo_directory = "videos"\nimage_directory = "images"\n', ["exactly one", "both"]),
        ('[[datasets]]\ncache_directory = "c"\n', ["exactly one", "neither"]),
        ('[[datasets]]\nvideo_directory = "videos"\nframe_extraction = "random"\n', ["frame_extraction", "'random'"]),
        ('[[datasets]]\nvideo_directory = "videos"\nbatch_size = true\n', ["batch_size", "int"]),
        ('[[datasets]]\nvideo_directory = "videos"\nnum_repeats = 0\n', ["num_repeats", ">= 1"]),
        ('[[datasets]]\nvideo_jsonl_file = "meta.jsonl"\n', ["video_jsonl_file", "not supported"]),
        ('[general]\nvideo_directory = "videos"\n[[datasets]]\nvideo_directory = "videos"\n', ["belongs in each"]),
        ('[[datasets]]\nvideo_directory = "videos"\n[[datasets]]\nvideo_directory = "videos"\n', ["share cache_directory"]),
        ('[general]\nbatch_size = 1\n', ["no [[datasets]]"]),
        ("[[datasets]\n", ["not valid TOML"]),
    ],
)
def test_errors_name_key_and_file(dirs, body, needles):
    path = _write(dirs, body)
    with pytest.raises(DatasetConfigError) as info:
        load_dataset_config(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_missing_file_names_flag(tmp_path):
    with pytest.raises(DatasetConfigError, match="--dataset_config .*not_there.toml"):
        load_dataset_config(tmp_path / "not_there.toml")


def test_training_reads_a_config_whose_media_is_gone(tmp_path):
    (tmp_path / "cache").mkdir()
    path = _write(tmp_path, '[general]\nresolution = [64, 64]\n\n[[datasets]]\nvideo_directory = "deleted_clips"\n'
                            'audio_directory = "deleted_audio"\ncache_directory = "cache"\ntarget_frames = [9]\n')
    with pytest.raises(DatasetConfigError, match="deleted_clips"):
        load_dataset_config(path)  # caching needs the media
    (entry,) = load_dataset_config(path, require_media=False).datasets  # training needs only the caches
    assert entry.cache_directory == str((tmp_path / "cache").resolve())
    assert entry.video_directory.endswith("deleted_clips")
