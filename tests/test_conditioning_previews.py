"""Previews of conditioned runs: `--i IMAGE` / `--v REFERENCE` prompt options (musubi's) rendered by the
stock diffusers `LTX2ImageToVideoPipeline` / `LTX2InContextPipeline` around the training transformer."""

from __future__ import annotations

import av
import pytest
import torch
from diffusers import LTX2ImageToVideoPipeline, LTX2InContextPipeline, LTX2Pipeline

from ltxv2_diffusers.data.prompts import load_prompts, parse_prompt_line
from ltxv2_diffusers.data.synthetic import write_image, write_video
from ltxv2_diffusers.models.presets import build_components
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.training.previews import build_preview_pipeline, preview_pipeline_class, render_preview


@pytest.fixture(scope="module")
def tiny():
    return build_components("tiny", seed=0)


@pytest.fixture()
def media(tmp_path):
    return {"image": write_image(tmp_path / "first.png", (96, 96), index=1),
            "video": write_video(tmp_path / "ref.mp4", 9, (96, 96), audio=False)}


def test_prompt_options_and_paths(tmp_path, media):
    p = parse_prompt_line("a cat --i first.png --v ref.mp4 --w 64 --h 64 --f 9")
    assert (p.image, p.reference) == ("first.png", "ref.mp4")
    assert preview_pipeline_class(p) is LTX2InContextPipeline
    assert preview_pipeline_class(parse_prompt_line("a cat --i x.png")) is LTX2ImageToVideoPipeline
    assert preview_pipeline_class(parse_prompt_line("a cat")) is LTX2Pipeline
    f = tmp_path / "prompts.txt"
    f.write_text("a cat --v ref.mp4 --i first.png\n")  # relative to the prompt file
    assert load_prompts(f)[0].reference == str(tmp_path / "ref.mp4")
    f.write_text("# x\na cat --v missing.mp4\n")
    with pytest.raises(ValueError, match="prompts.txt line 2: --v missing.mp4: no such file"):
        load_prompts(f)


def render(tiny, tmp_path, prompt, mode=LtxMode.VIDEO, **kwargs):
    pipe = build_preview_pipeline(tiny["transformer"], tiny["vae"], tiny["audio_vae"], tiny["vocoder"],
                                  pipeline_class=preview_pipeline_class(prompt))
    pipe.set_progress_bar_config(disable=True)
    embeds = (torch.randn(1, 8, 48, generator=torch.Generator().manual_seed(0)), torch.ones(1, 8, dtype=torch.bool))
    return render_preview(pipe, prompt, embeds, None, mode, tmp_path / "p", **kwargs)


def frames_of(path):
    with av.open(str(path)) as f:
        return [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]


def test_reference_preview_through_in_context_pipeline_beside_the_reference(tiny, tmp_path, media):
    prompt = parse_prompt_line(f"x --v {media['video']} --i {media['image']} --w 64 --h 64 --f 9 --s 2")
    path = render(tiny, tmp_path, prompt, include_reference=True)
    frames = frames_of(path)
    assert len(frames) == 9 and frames[0].shape == (64, 128, 3)  # reference | output


def test_first_frame_preview_through_image_to_video_pipeline(tiny, tmp_path, media):
    prompt = parse_prompt_line(f"x --i {media['image']} --w 64 --h 64 --f 9 --s 2")
    frames = frames_of(render(tiny, tmp_path, prompt, include_reference=True))
    assert len(frames) == 9 and frames[0].shape == (64, 64, 3)  # nothing beside it without --v
    with pytest.raises(ValueError, match="--i / --v condition video"):
        render(tiny, tmp_path, prompt, mode=LtxMode.AUDIO)
