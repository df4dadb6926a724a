"""Conditioning flags: musubi spellings accepted, contradictions fail before any model loads naming the
flags, and the LoRA metadata the official pipelines and musubi read."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import base_argv
from ltxv2_diffusers.conditioning.metadata import conditioning_metadata
from ltxv2_diffusers.training.args import parse_args


@pytest.fixture()
def argv(files, tmp_path: Path):
    return lambda *extra: base_argv(files, tmp_path, *extra)


def test_musubi_spellings_and_defaults(argv):
    args = parse_args(argv("--ltx_mode", "video", "--ltx2_first_frame_conditioning_p", "0.3",
                           "--ltx2_extend_prefix_frames", "2", "--ic_lora_strategy", "v2v", "--reference_downscale",
                           "2"))
    assert args.first_frame_conditioning_p == 0.3 and args.extend_prefix_frames == 2
    assert args.ic_lora_strategy == "v2v" and args.reference_downscale == 2


@pytest.mark.parametrize("extra, words", [
    (("--ltx_mode", "av", "--ic_lora_strategy", "v2v"), ["--ic_lora_strategy v2v", "--ltx_mode av"]),
    (("--ltx_mode", "video", "--ic_lora_strategy", "audio_ref_ic"), ["--ic_lora_strategy audio_ref_ic", "--ltx_mode"]),
    (("--ltx_mode", "video", "--ic_lora_strategy", "av_ic"), ["--ic_lora_strategy av_ic", "--ltx_mode"]),
    (("--ltx_mode", "audio", "--first_frame_conditioning_p", "0.5"), ["--first_frame_conditioning_p", "--ltx_mode audio"]),
    (("--ltx_mode", "video", "--reference_downscale", "2"), ["--reference_downscale", "--ic_lora_strategy"]),
    (("--ltx_mode", "video", "--ic_lora_ref_probability", "0.5"), ["--ic_lora_ref_probability", "--ic_lora_strategy"]),
    (("--ltx_mode", "video", "--audio_extend_prefix_frames", "3"), ["--audio_extend_prefix_frames", "--ltx_mode video"]),
    (("--ltx_mode", "audio", "--extend_suffix_frames", "1"), ["--extend_prefix_frames", "--ltx_mode audio"]),
    (("--ltx_mode", "video", "--first_frame_conditioning_p", "1.5"), ["--first_frame_conditioning_p", "[0, 1]"]),
    (("--ltx_mode", "av", "--ic_lora_strategy", "video_ref_only_av", "--audio_ref_use_negative_positions"),
     ["--audio_ref_use_negative_positions", "audio_ref_ic"]),
])
def test_contradictions_fail_before_model_load_naming_both_flags(argv, capsys, extra, words):
    with pytest.raises(SystemExit) as exc:
        parse_args(argv(*extra))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_metadata_as_official_and_musubi_write_it():
    md = conditioning_metadata(SimpleNamespace(ic_lora_strategy="v2v", reference_downscale=2,
                                               reference_temporal_scale=2, ic_lora_ref_probability=0.8))
    assert md["reference_downscale_factor"] == 2 == md["reference_spatial_scale_factor"] == md["ss_reference_downscale_factor"]
    assert md["reference_temporal_scale_factor"] == 2 == md["ss_reference_temporal_scale_factor"]
    assert md["ss_ic_lora_strategy"] == "v2v" and md["ss_v2v_training"] is True
    assert md["ss_ic_lora_ref_probability"] == 0.8 and md["ss_ltx2_first_frame_conditioning_p"] == 0.1
    # the official trainer writes the downscale factor of every IC-LoRA, 1 included
    assert conditioning_metadata(SimpleNamespace(ic_lora_strategy="v2v"))["reference_downscale_factor"] == 1
    assert conditioning_metadata(SimpleNamespace(first_frame_conditioning_p=0.5)) == {
        "ss_i2v_training": True, "ss_ltx2_first_frame_conditioning_p": 0.5}
    assert conditioning_metadata(SimpleNamespace()) == {}


def test_audio_only_ic_lora_records_no_first_frame():
    from ltxv2_diffusers.modes import LtxMode

    md = conditioning_metadata(SimpleNamespace(ic_lora_strategy="audio_ref_ic", mode=LtxMode.AUDIO,
                                               audio_ref_use_negative_positions=True))
    assert md == {"ss_ic_lora_strategy": "audio_ref_ic", "ss_audio_ref_ic_training": True,
                  "ss_audio_ref_use_negative_positions": True}


def test_audio_previews_with_video_conditions_fail_at_parse_time(argv, capsys, tmp_path):
    prompts = tmp_path / "prompts.txt"
    (tmp_path / "ref.png").write_bytes(b"x")
    prompts.write_text("a voice\na voice --v ref.png\n")
    with pytest.raises(SystemExit):
        parse_args(argv("--ltx_mode", "audio", "--sample_prompts", str(prompts)))
    assert "prompts [2] have --i / --v" in capsys.readouterr().err


def test_lora_target_preset_names_the_strategy_as_in_musubi(argv):
    args = parse_args(argv("--ltx_mode", "audio", "--lora_target_preset", "audio_ref_ic"))
    assert args.ic_lora_strategy == "audio_ref_ic"
    args = parse_args(argv("--ltx_mode", "video", "--lora_target_preset", "v2v", "--ic_lora_strategy", "none"))
    assert args.ic_lora_strategy == "none"  # an explicit choice wins


def test_musubi_command_gets_musubis_first_frame_default(argv, files):
    model = files[1]
    args = parse_args(argv("--ltx_mode", "video", "--ltx2_checkpoint", str(model)))
    assert args.first_frame_conditioning_p == 0.1  # musubi conditions the first frame of every video run
    args = parse_args(argv("--ltx_mode", "audio", "--ltx2_checkpoint", str(model)))
    assert args.first_frame_conditioning_p is None  # audio only: nothing to condition
    assert parse_args(argv("--ltx_mode", "video")).first_frame_conditioning_p is None
