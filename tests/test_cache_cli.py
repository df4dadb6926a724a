"""The three caching commands end to end (in-process `main(argv)`), sample prompts, push, exit codes."""

import pytest
import torch

from ltxv2_diffusers.cli import cache_audio_latents, cache_latents, cache_text
from ltxv2_diffusers.data.batching import BatchManager
from ltxv2_diffusers.data.config import load_dataset_config
from ltxv2_diffusers.data.jobs import load_sample_prompt_embeddings
from ltxv2_diffusers.data.prompts import parse_sample_prompts
from ltxv2_diffusers.data.stores import CacheStore
from ltxv2_diffusers.data.synthetic import make_dataset, write_video
from ltxv2_diffusers.models.loading import save_official_checkpoint
from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.text.tiny import write_tiny_gemma


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("ws")
    comps = build_components("tiny", components=("vae", "audio_vae", "connectors"))
    ltx = save_official_checkpoint(root / "ltx-2-tiny.safetensors", **comps)
    toml = make_dataset(root / "data", num_videos=2, num_frames=17, target_frames=(9,))
    prompts = root / "prompts.txt"
    prompts.write_text("# previews\na cat walks --w 64 --h 64 --f 9 --n blurry, low quality\n\nthe sea at night --s 20\n")
    return {"ltx": ltx, "gemma": write_tiny_gemma(root / "gemma"), "toml": str(toml), "prompts": str(prompts),
            "root": root}


def test_commands_cache_everything_training_needs(workspace, capsys):
    ws = workspace
    common = ["--dataset_config", ws["toml"], "--device", "cpu", "--batch_size", "2"]
    assert cache_latents.main(common + ["--vae", ws["ltx"], "--vae_dtype", "fp32", "--ltx_mode", "av",
                                        "--debug_mode", "--num_workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "video cache: 2 cached, 0 already cached, 0 bad" in err and "--debug_mode is accepted" in err
    assert cache_audio_latents.main(common + ["--vae", ws["ltx"]]) == 0
    assert cache_text.main(common + ["--text_encoder", ws["gemma"], "--text_encoder_backend", "gemma",
                                     "--vae", ws["ltx"], "--ltxv2_audio_video", "--max_length", "16",
                                     "--sample_prompts", ws["prompts"]]) == 0
    assert "sample prompts: 4 cached" in capsys.readouterr().err

    config = load_dataset_config(ws["toml"])
    batch = next(BatchManager.from_config(config, "av", seed=0, text_dims=(24, 24)).iter_epoch(0))
    assert batch["latents"].shape == (1, 128, 2, 2, 2) and batch["text"].shape == (1, 16, 48)
    assert batch["audio_latents"].shape[:2] == (1, 8) and batch["audio_lengths"].dtype == torch.int64

    embeds = load_sample_prompt_embeddings(config.datasets[0].cache_directory)
    assert sorted(embeds) == ["", "a cat walks", "blurry, low quality", "the sea at night"]
    assert embeds["a cat walks"][0].shape == (16, 48)

    # Re-running is a no-op that still succeeds.
    assert cache_latents.main(common + ["--vae", ws["ltx"], "--vae_dtype", "fp32"]) == 0
    assert "0 cached, 2 already cached" in capsys.readouterr().err


def test_push_to_hub_hands_the_cache_to_datasets(workspace, monkeypatch):
    import datasets

    pushed = []
    # The network boundary: record what datasets would upload.
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo, **kw: pushed.append((repo, kw["config_name"], sorted(self["key"]))))
    ws = workspace
    assert cache_latents.main(["--dataset_config", ws["toml"], "--device", "cpu", "--vae", ws["ltx"],
                               "--vae_dtype", "fp32", "--push_to_hub", "me/ltx-cache"]) == 0
    assert pushed == [("me/ltx-cache", "video", ["clip00_00000-009", "clip01_00000-009"])]


def test_exit_codes_for_bad_input(tmp_path, workspace, capsys):
    ws = workspace
    toml = make_dataset(tmp_path, num_videos=1, num_frames=17, target_frames=(9,))
    (tmp_path / "videos" / "clip00.txt").unlink()  # the only video loses its caption
    args = ["--dataset_config", str(toml), "--device", "cpu", "--vae", ws["ltx"], "--vae_dtype", "fp32"]
    assert cache_latents.main(args) == 1
    err = capsys.readouterr().err
    assert "clip00.mp4" in err and "nothing was cached" in err

    toml = make_dataset(tmp_path / "two", num_videos=1, num_frames=17, target_frames=(9,))
    write_video(tmp_path / "two" / "videos" / "uncaptioned.mp4", 17)
    args = ["--dataset_config", str(toml), "--device", "cpu", "--vae", ws["ltx"], "--vae_dtype", "fp32"]
    assert cache_latents.main(args) == 0
    assert cache_latents.main(args + ["--strict"]) == 1
    assert "1 bad item(s) with --strict" in capsys.readouterr().err

    broken = tmp_path / "broken.toml"
    broken.write_text("[[datasets]]\nvideo_directory = 'nowhere'\ncache_directory = 'c'\nresolution = [64, 64]\n")
    with pytest.raises(SystemExit, match="broken.toml"):
        cache_latents.main(["--dataset_config", str(broken), "--vae", ws["ltx"]])
    with pytest.raises(SystemExit, match="gemma backend needs the LTX-2 text connectors"):
        cache_text.main(["--dataset_config", str(toml), "--text_encoder", ws["gemma"]])
    with pytest.raises(SystemExit, match="--vae .*missing.safetensors' does not exist"):
        cache_latents.main(["--dataset_config", str(toml), "--vae", str(tmp_path / "missing.safetensors")])


def test_sample_prompt_file_parsing(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("a dog --w 768 --h 512\n# comment\na dog\nrain --n  dark --d 5\n")
    # The empty string is the previews' default negative prompt, so it is cached too.
    assert parse_sample_prompts(str(f)) == ["a dog", "", "rain", "dark"]
    with pytest.raises(FileNotFoundError, match="--sample_prompts"):
        parse_sample_prompts(str(tmp_path / "none.txt"))


def test_rows_of_removed_items_are_dropped_unless_keep_cache(tmp_path, workspace, capsys):
    toml = make_dataset(tmp_path, num_videos=3, num_frames=17, target_frames=(9,))
    args = ["--dataset_config", str(toml), "--device", "cpu", "--vae", workspace["ltx"], "--vae_dtype", "fp32",
            "--batch_size", "2"]
    assert cache_latents.main(args) == 0
    store = CacheStore(load_dataset_config(toml).datasets[0].cache_directory, "video")
    before = store.read(store.index()["clip02_00000-009"])["latents"]
    (tmp_path / "videos" / "clip00.mp4").unlink()
    assert cache_latents.main(args + ["--keep_cache"]) == 0
    assert len(store.index()) == 3
    assert cache_latents.main(args) == 0
    assert "removed 1 cached video row(s)" in capsys.readouterr().err
    assert sorted(store.index()) == ["clip01_00000-009", "clip02_00000-009"]
    assert torch.equal(store.read(store.index()["clip02_00000-009"])["latents"], before)
