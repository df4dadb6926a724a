"""A pipeline folder saved with our components reloads through diffusers' own loaders in a fresh process.

`model_index.json` names our components `["ltxv2_diffusers", "<class>"]` (not the file that happens to
define them), and a fresh process that imports only the top-level package (which loads nothing
else) gets them back from `DiffusionPipeline`, `LTX2Pipeline` and `AutoModel`; without that import,
diffusers (which imports no library a folder names) says which one to import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from diffusers import DiffusionPipeline, LTX2Pipeline

from ltxv2_diffusers.models.adapter import LTXAVModelAdapter, context_widths
from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler
from ltxv2_diffusers.training.previews import CachedContextConnectors

FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import torch
    from diffusers import AutoModel, DiffusionPipeline, LTX2Pipeline

    folder = sys.argv[1]
    out = {}
    try:  # diffusers imports no library a folder names
        DiffusionPipeline.from_pretrained(folder, text_encoder=None, tokenizer=None)
    except ValueError as exc:
        out["without_import"] = str(exc)
    import ltxv2_diffusers

    assert "ltxv2_diffusers.models.scheduler" not in sys.modules  # only the library name leads there
    for loader in (DiffusionPipeline, LTX2Pipeline):
        pipe = loader.from_pretrained(folder, text_encoder=None, tokenizer=None)
        pipe.scheduler.set_timesteps(4, mu=1.0)
        text = torch.arange(2 * 3 * pipe.connectors.video_width * 2, dtype=torch.float32).reshape(2, 3, -1) / 100
        video, audio, _ = pipe.connectors(text[..., : pipe.connectors.video_width + pipe.connectors.audio_width],
                                          torch.ones(2, 3, dtype=torch.int64))
        out[loader.__name__] = {
            "scheduler": type(pipe.scheduler).__name__, "connectors": type(pipe.connectors).__name__,
            "pipeline": type(pipe).__name__, "sigmas": pipe.scheduler.sigmas.tolist(),
            "config": {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")},
            "video_sum": float(video.sum()), "audio_sum": float(audio.sum()),
        }
    out["AutoModel"] = type(AutoModel.from_pretrained(folder, subfolder="connectors")).__name__


    class AdapterPipeline(DiffusionPipeline):  # a user's pipeline with our model adapter as a component
        def __init__(self, transformer, scheduler):
            super().__init__()
            self.register_modules(transformer=transformer, scheduler=scheduler)


    adapter = AdapterPipeline.from_pretrained(sys.argv[2]).transformer
    out["adapter"] = [type(adapter).__name__, float(sum(p.detach().double().sum() for p in adapter.parameters()))]
    print(json.dumps(out))
""")


class AdapterPipeline(DiffusionPipeline):
    def __init__(self, transformer, scheduler):
        super().__init__()
        self.register_modules(transformer=transformer, scheduler=scheduler)


@pytest.mark.slow  # a fresh Python process importing torch and diffusers
def test_saved_pipelines_reload_in_a_fresh_process(tmp_path):
    components = build_components("tiny", seed=0)
    video_width, audio_width = context_widths(components["transformer"].config)
    scheduler = LTXV2FlowMatchScheduler(shift_terminal=0.2)  # a non-default value must survive the round trip
    connectors = CachedContextConnectors(video_width, audio_width)
    pipe = LTX2Pipeline(scheduler=scheduler, connectors=connectors, text_encoder=None, tokenizer=None,
                        transformer=components["transformer"], vae=components["vae"],
                        audio_vae=components["audio_vae"], vocoder=components["vocoder"])
    pipe.save_pretrained(tmp_path / "pipeline")
    index = json.loads((tmp_path / "pipeline" / "model_index.json").read_text())
    assert index["scheduler"] == ["ltxv2_diffusers", "LTXV2FlowMatchScheduler"]
    assert index["connectors"] == ["ltxv2_diffusers", "CachedContextConnectors"]

    adapter = LTXAVModelAdapter.from_components(components["transformer"], components["vae"], components["audio_vae"])
    AdapterPipeline(adapter, scheduler).save_pretrained(tmp_path / "adapter_pipeline")
    index = json.loads((tmp_path / "adapter_pipeline" / "model_index.json").read_text())
    assert index["transformer"] == ["ltxv2_diffusers", "LTXAVModelAdapter"]

    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "pipeline"),
                          str(tmp_path / "adapter_pipeline")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    scheduler.set_timesteps(4, mu=1.0)
    text = torch.arange(2 * 3 * video_width * 2, dtype=torch.float32).reshape(2, 3, -1) / 100
    video, audio, _ = connectors(text[..., : video_width + audio_width], torch.ones(2, 3, dtype=torch.int64))
    for name in ("DiffusionPipeline", "LTX2Pipeline"):
        got = loaded[name]
        assert (got["pipeline"], got["scheduler"], got["connectors"]) == (
            "LTX2Pipeline", "LTXV2FlowMatchScheduler", "CachedContextConnectors")
        assert got["config"]["shift_terminal"] == 0.2
        assert got["sigmas"] == scheduler.sigmas.tolist()
        assert (got["video_sum"], got["audio_sum"]) == (float(video.sum()), float(audio.sum()))
    assert loaded["AutoModel"] == "CachedContextConnectors"
    assert loaded["adapter"] == ["LTXAVModelAdapter", float(sum(p.detach().double().sum() for p in adapter.parameters()))]
    # without the import, diffusers' own error says what to do
    assert "import ltxv2_diffusers before calling `from_pretrained`" in loaded["without_import"]
