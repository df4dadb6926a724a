"""IC-LoRA references end to end on real PyAV media: dataset keys, the cache commands' reference jobs
(resumable, a missing reference reported and only its item skipped), batches carrying the references, and
a short av_ic training run whose LoRA carries the reference factor the official pipelines read."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ltxv2_diffusers.cli import cache_audio_latents, cache_latents, cache_text
from ltxv2_diffusers.cli.demo import write_workspace
from ltxv2_diffusers.data.batching import BatchManager
from ltxv2_diffusers.data.config import DatasetConfigError, load_dataset_config, parse_dataset_config
from ltxv2_diffusers.data.stores import CacheStore
from ltxv2_diffusers.data.synthetic import make_dataset, write_audio, write_image, write_video


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs")
    refs, ref_audio = root / "refs", root / "ref_audio"
    write_image(refs / "clip00.png", (96, 96), index=3)  # an image reference
    write_video(refs / "clip01.mp4", 17, (96, 96), audio=False)  # a video reference
    # clip02 has no reference at all: reported, skipped
    write_audio(ref_audio / "clip00.wav", 0.5)
    write_audio(ref_audio / "clip01.wav", 0.3)
    make_dataset(root / "data", num_videos=3, num_frames=17, size=(96, 96), resolution=(64, 64), target_frames=(9,),
                 audio=True, reference_directory=str(refs), reference_audio_directory=str(ref_audio))
    return write_workspace(root)


def test_dataset_keys_singular_plural_and_errors(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "r").mkdir()
    cfg = parse_dataset_config({"general": {"reference_cache_directory": "rc"},
                                "datasets": [{"video_directory": str(tmp_path / "v"),
                                              "reference_directory": str(tmp_path / "r"), "reference_frames": 9}]},
                               tmp_path / "d.toml")
    entry = cfg.datasets[0]
    assert entry.reference_directories == (str(tmp_path / "r"),) and len(entry.reference_cache_directories) == 1
    assert entry.reference_frames == 9
    with pytest.raises(DatasetConfigError, match="reference_directories.*reference_cache_directories"):
        parse_dataset_config({"datasets": [{"video_directory": str(tmp_path / "v"),
                                            "reference_directories": [str(tmp_path / "r"), str(tmp_path / "v")]}]},
                             tmp_path / "d.toml")
    with pytest.raises(DatasetConfigError, match="reference_frames"):
        parse_dataset_config({"datasets": [{"video_directory": str(tmp_path / "v"), "reference_frames": 10}]},
                             tmp_path / "d.toml")


def test_reference_caches_batches_and_training(ws, capsys, tmp_path):
    common = ["--dataset_config", str(ws.dataset_config), "--ltx_mode", "av", "--device", "cpu", "--num_workers", "1"]
    assert cache_latents.main([*common, "--vae", str(ws.model), "--reference_downscale", "2"]) == 0
    err = capsys.readouterr().err
    assert "reference cache: 2 cached, 0 already cached, 1 bad" in err and "no reference named clip02" in err
    assert cache_latents.main([*common, "--vae", str(ws.model), "--reference_downscale", "2"]) == 0
    assert "reference cache: 0 cached, 2 already cached" in capsys.readouterr().err  # resumable: nothing redone
    assert cache_audio_latents.main([*common, "--vae", str(ws.model)]) == 0
    assert "reference_audio cache: 2 cached, 0 already cached, 1 bad" in capsys.readouterr().err
    assert cache_text.main([*common, "--text_encoder", str(ws.text_encoder), "--text_encoder_backend", "gemma",
                            "--ltxv2_model", str(ws.model), "--max_length", "16"]) == 0

    config = load_dataset_config(ws.dataset_config)
    store = CacheStore(config.datasets[0].reference_cache_directories[0], "reference")
    shapes = {store.row(i)["key"]: store.row(i)["latents_shape"] for i in store.index().values()}
    assert shapes == {"clip00_00000-009": [128, 2, 1, 1], "clip01_00000-009": [128, 2, 1, 1]}  # 64 px / 2 / 32

    manager = BatchManager.from_config(config, "av", references=("video", "audio"))
    assert manager.num_items == 2  # clip02 left out: it has no reference
    batch = next(manager.iter_epoch(0))
    assert batch["reference_latents"].shape == (1, 128, 2, 1, 1)
    assert batch["reference_audio_latents"].shape[:2] == (1, 8) and batch["latents"].shape == (1, 128, 2, 2, 2)

    from ltxv2_diffusers.cli.train import main

    out = tmp_path / "out"
    assert main(ws.train_argv(out, 2, ["--ic_lora_strategy", "av_ic", "--reference_downscale", "2",
                                       "--first_frame_conditioning_p", "0.5", "--network_dim", "2"])) == 0
    with safe_open(str(out / "demo_lora.safetensors"), "pt") as f:
        meta = f.metadata()
    # what the official ltx_pipelines.iclora_utils.read_lora_reference_downscale_factor reads
    assert int(meta.get("reference_downscale_factor", 1)) == 2
    assert meta["ss_ic_lora_strategy"] == "av_ic" and json.loads(meta["ss_ltx2_first_frame_conditioning_p"]) == 0.5


def test_reference_frame_plan():
    from ltxv2_diffusers.data.references import reference_frame_plan

    assert reference_frame_plan(17, None, 1) == (17, 17)
    assert reference_frame_plan(17, None, 2) == (17, 9)  # first frame, then every second: 3 -> 2 latent frames
    assert reference_frame_plan(33, 9, 1) == (9, 9)
    with pytest.raises(ValueError, match="cannot be subsampled by 2"):
        reference_frame_plan(9, None, 2)


def test_musubi_reference_cache_files_are_read(tmp_path):
    """musubi writes a reference's latents under the item's own cache file name in reference_cache_directory."""
    from ltxv2_diffusers.data import musubi
    from ltxv2_diffusers.data.batching import CacheSource

    cache, refs = tmp_path / "cache", tmp_path / "cache_ref"
    cache.mkdir()
    refs.mkdir()
    target = torch.randn(128, 3, 2, 2)
    reference = torch.randn(128, 3, 1, 1).to(torch.bfloat16)
    musubi.write_video(str(cache), "clip_00000-017", (64, 64), target)
    musubi.write_text(str(cache), "clip_00000-017", torch.randn(4, 24), torch.ones(4, dtype=torch.int32))
    musubi.write_video(str(refs), "clip_00000-017", (64, 64), reference)
    source = CacheSource(str(cache), 1, 1, reference_cache_directories=(str(refs),))
    batch = next(BatchManager([source], "video", references=("video",)).iter_epoch(0))
    assert torch.equal(batch["reference_latents"][0], reference) and torch.equal(batch["latents"][0], target)


def test_a_bad_reference_leaves_only_its_item_out(tmp_path, caplog):
    """Reference latents are validated like the target's: a NaN reference is named and its item left out."""
    from ltxv2_diffusers.data import musubi
    from ltxv2_diffusers.data.batching import CacheSource

    cache, refs = tmp_path / "cache", tmp_path / "cache_ref"
    cache.mkdir()
    refs.mkdir()
    for key, ref_value in (("good_00000-017", 0.5), ("nan_00000-017", float("nan"))):
        musubi.write_video(str(cache), key, (64, 64), torch.randn(128, 3, 2, 2))
        musubi.write_text(str(cache), key, torch.randn(4, 24), torch.ones(4, dtype=torch.int32))
        musubi.write_video(str(refs), key, (64, 64), torch.full((128, 3, 1, 1), ref_value))
    source = CacheSource(str(cache), 1, 1, reference_cache_directories=(str(refs),))
    with caplog.at_level("WARNING"):
        manager = BatchManager([source], "video", references=("video",))
    assert manager.num_items == 1 and manager.left_out == ["nan_00000-017"]
    assert "NaN" in caplog.text and "nan_00000-017" in caplog.text
