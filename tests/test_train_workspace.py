"""The shared training workspace (conftest.py builds it once per session) holds what the tests expect."""

from __future__ import annotations

from conftest import workspace


def test_workspace_has_all_three_caches(tmp_path_factory):
    from ltxv2_diffusers.data.batching import BatchManager
    from ltxv2_diffusers.data.config import load_dataset_config

    ws = workspace(tmp_path_factory)
    manager = BatchManager.from_config(load_dataset_config(ws.dataset_config), mode="av", seed=0)
    batch = next(manager.iter_epoch(0))
    assert len(manager) == 2 and len(batch["keys"]) == 2
    assert {"latents", "audio_latents", "audio_lengths", "text", "text_mask"} <= set(batch)
    assert ws.model.is_file() and (ws.text_encoder / "config.json").is_file()
