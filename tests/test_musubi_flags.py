"""musubi-tuner's LTX-2 flags today (its `docs/ltx_2.md`): mapped where they map, ignored with a warning,
or an error naming the flag; and `--ltxv2_timestep_format` read wherever timesteps enter."""

from __future__ import annotations

import argparse
import logging

import pytest
import torch

from conftest import base_argv, make_plugin
from ltxv2_diffusers import plugins
from ltxv2_diffusers.modes import LtxMode
from ltxv2_diffusers.training.args import parse_args
from ltxv2_diffusers.training.sigma_sampling import SigmaSampler


def _sigmas(args, n=256, tokens=2048, seed=0):
    return plugins.sample_sigmas(n, tokens, "video", args, torch.Generator().manual_seed(seed))


# Each format's definition (docs/training.md, "Timesteps and sigmas"): sigma of a user timestep t.
DEFINITIONS = {"flowmatch_1_1000": lambda t: (t - 1) / 1000, "legacy_0_1000": lambda t: t / 1000,
               "sd3_0_1": lambda t: t}


@pytest.mark.parametrize("fmt, lo_t, hi_t", [("flowmatch_1_1000", 101, 601), ("legacy_0_1000", 101, 601),
                                             ("sd3_0_1", 0.25, 0.75)])
@pytest.mark.parametrize("method", ["shifted_logit_normal", "uniform", "sigmoid", "shift"])
def test_timestep_range_is_read_in_the_declared_format(files, tmp_path, fmt, lo_t, hi_t, method):
    argv = base_argv(files, tmp_path, "--timestep_sampling", method, "--discrete_flow_shift", "3")
    argv[argv.index("--ltxv2_timestep_format") + 1] = fmt
    plain = _sigmas(parse_args(argv))
    ranged = _sigmas(parse_args(argv + ["--min_timestep", str(lo_t), "--max_timestep", str(hi_t)]))
    lo, hi = DEFINITIONS[fmt](lo_t), DEFINITIONS[fmt](hi_t)
    torch.testing.assert_close(ranged, lo + plain * (hi - lo), rtol=0, atol=1e-6)  # musubi's scaling, in sigma
    assert float(ranged.min()) >= lo - 1e-6 and float(ranged.max()) <= hi + 1e-6


def test_the_same_numbers_mean_different_sigmas_per_format(files, tmp_path):
    got = {}
    for fmt in ("flowmatch_1_1000", "legacy_0_1000"):
        argv = base_argv(files, tmp_path, "--timestep_sampling", "uniform", "--min_timestep", "1",
                         "--max_timestep", "501")
        argv[argv.index("--ltxv2_timestep_format") + 1] = fmt
        got[fmt] = _sigmas(parse_args(argv))
    u = _sigmas(argparse.Namespace(timestep_sampling="uniform"))
    torch.testing.assert_close(got["flowmatch_1_1000"], 0.5 * u, rtol=0, atol=1e-6)  # [0, 0.5]
    torch.testing.assert_close(got["legacy_0_1000"], 0.001 + 0.5 * u, rtol=0, atol=1e-6)  # [0.001, 0.501]


@pytest.mark.parametrize("fmt, extra, message", [
    ("sd3_0_1", ["--max_timestep", "500"], "--max_timestep 500 is outside the sd3_0_1 range [0, 1]"),
    ("flowmatch_1_1000", ["--min_timestep", "0"], "--min_timestep 0 is outside the flowmatch_1_1000 range"),
    ("legacy_0_1000", ["--min_timestep", "600", "--max_timestep", "500"], "empty sigma range"),
    ("legacy_0_1000", ["--preserve_distribution_shape"], "needs --min_timestep"),
])
def test_timesteps_outside_the_format_fail(files, tmp_path, capsys, fmt, extra, message):
    argv = base_argv(files, tmp_path, *extra)
    argv[argv.index("--ltxv2_timestep_format") + 1] = fmt
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_sampling_methods_follow_musubis_definitions():
    n, g = 512, lambda: torch.Generator().manual_seed(3)
    normal = torch.randn(n, generator=g())
    sig = SigmaSampler("sigmoid", sigmoid_scale=2.0).sample(n, 1024, g())
    torch.testing.assert_close(sig, torch.sigmoid(2.0 * normal))
    shifted = SigmaSampler("shift", sigmoid_scale=2.0, shift=3.0).sample(n, 1024, g())
    t = torch.sigmoid(2.0 * normal)
    torch.testing.assert_close(shifted, 3.0 * t / (1 + 2.0 * t))
    assert float(shifted.mean()) > float(sig.mean()) + 0.1  # the shift moves mass to high noise
    kept = SigmaSampler("uniform", range=(0.2, 0.4), preserve_distribution_shape=True).sample(n, 1024, g())
    assert kept.shape == (n,) and float(kept.min()) >= 0.2 and float(kept.max()) <= 0.4
    draws = torch.rand(n, generator=g())  # the first draw's in-range values come first, in order
    first = draws[(draws >= 0.2) & (draws <= 0.4)]
    torch.testing.assert_close(kept[: first.numel()], first)
    default = SigmaSampler.from_args(argparse.Namespace(sigma_sampling="shifted_logit_normal"))
    from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

    torch.testing.assert_close(default.sample(n, 4096, g()),  # unchanged: the scheduler's own sampler
                               LTXV2FlowMatchScheduler().sample_sigmas(n, 4096, generator=g()), rtol=0, atol=0)


def test_musubi_spellings_map_onto_ours(files, tmp_path, caplog):
    dataset, model, _ = files
    argv = ["--dataset_config", str(dataset), "--ltx2_checkpoint", str(model), "--gemma_root", "/gemma",
            "--ltx2_mode", "va", "--ltxv2_timestep_format", "flowmatch_1_1000", "--output_dir", str(tmp_path),
            "--network_module", "networks.lora_ltx2", "--fp8_base", "--fp8_scaled", "--flash_attn",
            "--sdpa", "--sample_tiled_vae", "--sample_vae_tile_size", "512", "--save_state",
            "--lora_target_preset", "video_sa_ff", "--network_args", "include_ff=True"]
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.training.args"):
        args = parse_args(argv)
    assert args.mode is LtxMode.AV and args.ltxv2_model == str(model) and args.text_encoder == "/gemma"
    assert args.network_module == "ltxv2_diffusers.lora" and args.fp8_base and args.attention_backend == "flash"
    assert args.network_args == ["target_modules=attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0,ff.net.0.proj,"
                                 "ff.net.2", "include_ff=True"]
    ignored = [r.getMessage() for r in caplog.records if "accepted for musubi-tuner commands and ignored" in r.getMessage()]
    assert [m.split()[0] for m in ignored] == ["--sdpa", "--save_state", "--sample_tiled_vae", "--sample_vae_tile_size"]
    for mode, expected in (("v", LtxMode.VIDEO), ("a", LtxMode.AUDIO)):
        assert parse_args(base_argv(files, tmp_path, "--ltx2_mode", mode)).mode is expected


def test_musubi_keys_in_a_config_file(files, tmp_path):
    dataset, model, _ = files
    config = tmp_path / "run.toml"
    config.write_text(f'dataset_config = "{dataset}"\nltx2_checkpoint = "{model}"\nltx2_mode = "av"\n'
                      f'ltxv2_timestep_format = "legacy_0_1000"\noutput_dir = "{tmp_path}"\n'
                      'timestep_sampling = "shift"\ndiscrete_flow_shift = 3.0\nmax_timestep = 900\n')
    args = parse_args(["--config_file", str(config)])
    assert args.ltxv2_model == str(model) and args.mode is LtxMode.AV and args.timestep_sampling == "shift"
    assert SigmaSampler.from_args(args).range == pytest.approx((0.0, 0.9))


@pytest.mark.parametrize("extra, message", [
    (["--nf4_base"], "--nf4_base is a musubi-tuner flag with no counterpart here: use --low_memory"),
    (["--shifted_logit_shift", "2.0"], "--shifted_logit_shift is a musubi-tuner flag"),
    (["--timestep_sampling", "logsnr"], "--timestep_sampling: invalid choice: 'logsnr'"),
    (["--lora_target_preset", "full"], "--lora_target_preset: invalid choice: 'full'"),
    (["--definitely_not_a_flag"], "unrecognized arguments: --definitely_not_a_flag"),
    (["--flash_attn", "--attention_backend", "native"], "--flash_attn contradicts --attention_backend native"),
    (["--save_last_n_epochs", "2"], "--save_last_n_epochs needs --save_every_n_steps or --save_every_n_epochs"),
    (["--timestep_sampling", "sigmoid", "--sigma_sampling", "uniform"], "--timestep_sampling sigmoid contradicts"),
])
def test_unsupported_musubi_flags_fail_naming_the_flag(files, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        parse_args(base_argv(files, tmp_path, *extra))
    assert message in capsys.readouterr().err


def test_audio_loss_weight_in_video_mode_warns_and_trains_on(files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.training.args"):
        args = parse_args(base_argv(files, tmp_path, "--ltx_mode", "video", "--audio_loss_weight", "2"))
    assert args.mode is LtxMode.VIDEO
    assert [r.getMessage() for r in caplog.records if "--audio_loss_weight" in r.getMessage()] == [
        "--audio_loss_weight 2 has no effect in --ltx_mode video (no audio is trained); ignored (use --ltx_mode av "
        "to train audio)"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule is for machines without CUDA")
def test_blocks_to_swap_without_cuda_is_ignored_with_a_warning(files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.training.args"):
        args = parse_args(base_argv(files, tmp_path, "--gradient_checkpointing", "--blocks_to_swap", "10"))
    assert args.blocks_to_swap is None and any("--blocks_to_swap 10 has no effect" in r.getMessage()
                                               for r in caplog.records)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from ltxv2_diffusers.models.loading import save_official_checkpoint
    from ltxv2_diffusers.models.presets import build_components

    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for version, preset in (("2.0", "tiny"), ("2.3", "tiny-2.3")):
        out[version] = d / f"{preset}.safetensors"
        parts = build_components(preset)
        save_official_checkpoint(out[version], transformer=parts["transformer"])
    return out


def test_ltx_version_is_checked_against_the_checkpoint(files, tmp_path, checkpoints, capsys, caplog):
    def argv(model, *extra):
        a = base_argv(files, tmp_path, *extra)
        a[a.index("--ltxv2_model") + 1] = str(model)
        return a

    for version, model in checkpoints.items():
        parse_args(argv(model, "--ltx_version", version, "--ltx_version_check_mode", "error"))
    with pytest.raises(SystemExit):
        parse_args(argv(checkpoints["2.3"], "--ltx_version", "2.0", "--ltx_version_check_mode", "error"))
    err = capsys.readouterr().err
    assert "--ltx_version 2.0 does not match" in err and "transformer.cross_attention_adaln" in err
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.training.args"):
        parse_args(argv(checkpoints["2.0"], "--ltx_version", "2.3"))  # warn is musubi's default mode
        parse_args(argv(checkpoints["2.0"], "--ltx_version", "2.3", "--ltx_version_check_mode", "off"))
    assert len([r for r in caplog.records if "does not match" in r.getMessage()]) == 1


@pytest.mark.parametrize("preset, allowed", [
    ("video_sa", r"^transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)$"),
    ("video_sa_ca_ff", r"^transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)$|\.ff\.net\.(0\.proj|2)$"),
    ("audio", r"^transformer_blocks\.\d+\.audio_(attn1|attn2|ff)\."),
    ("audio_v2a", r"^transformer_blocks\.\d+\.(audio_(attn1|attn2|ff)|video_to_audio_attn)\."),
    ("v2v", r"."),
])
def test_lora_target_presets_pick_musubis_modules(preset, allowed):
    import re

    from ltxv2_diffusers.lora import select_lora_targets, target_options_from_network_args
    from ltxv2_diffusers.models.presets import build_components
    from ltxv2_diffusers.training.args import LORA_TARGET_PRESETS

    transformer = build_components("tiny")["transformer"]
    options = target_options_from_network_args([f"{k}={v}" for k, v in LORA_TARGET_PRESETS[preset].items()])
    chosen = select_lora_targets(transformer, "av", options)
    assert chosen and all(re.search(allowed, name) for name in chosen)
    default = select_lora_targets(transformer, "av")
    if preset == "v2v":
        assert set(default) < set(chosen) and any(".ff." in n for n in chosen)
    if preset == "audio_v2a":
        assert any("video_to_audio_attn" in n for n in chosen) and not any("audio_to_video" in n for n in chosen)


@pytest.mark.parametrize("fmt, timesteps, sigmas", [("flowmatch_1_1000", [1.0, 501.0, 1000.0], [0.0, 0.5, 0.999]),
                                                   ("legacy_0_1000", [0.0, 500.0, 1000.0], [0.0, 0.5, 1.0]),
                                                   ("sd3_0_1", [0.0, 0.5, 1.0], [0.0, 0.5, 1.0])])
def test_plugin_supplied_timesteps_are_read_in_the_declared_format(pm, files, tmp_path, fmt, timesteps,
                                                                   sigmas):
    from ltxv2_diffusers.hookspecs import hookimpl
    from ltxv2_diffusers.plugins import PluginError

    plugins.register_plugin(make_plugin("fixed", ltxv2_sample_sigmas=hookimpl(
        lambda batch_size: {"timesteps": torch.tensor(timesteps)})), name="fixed")
    argv = base_argv(files, tmp_path)
    argv[argv.index("--ltxv2_timestep_format") + 1] = fmt
    torch.testing.assert_close(_sigmas(parse_args(argv), n=3), torch.tensor(sigmas))
    plugins.unregister_plugin("fixed")
    plugins.register_plugin(make_plugin("too_big", ltxv2_sample_sigmas=hookimpl(
        lambda batch_size: {"timesteps": torch.full((batch_size,), 1001.0)})), name="too_big")
    with pytest.raises(PluginError, match=f"'too_big' in hook ltxv2_sample_sigmas: .*outside the {fmt} range"):
        _sigmas(parse_args(argv), n=3)


def test_legacy_shifted_logit_normal_and_musubis_defaults(files, tmp_path):
    n, g = 512, lambda: torch.Generator().manual_seed(4)
    legacy = SigmaSampler("shifted_logit_normal", logit_std=1.5, logit_mode="legacy").sample(n, 2048, g())
    mu = 0.95 + (2.05 - 0.95) / (4096 - 1024) * (2048 - 1024)  # the token-count shift, as the official one
    torch.testing.assert_close(legacy, torch.sigmoid(torch.randn(n, generator=g()) * 1.5 + mu))
    assert SigmaSampler.from_args(parse_args(base_argv(files, tmp_path, "--ltx_version", "2.0",
                                                       "--ltx_version_check_mode", "off"))).logit_mode == "legacy"
    assert SigmaSampler.from_args(parse_args(base_argv(files, tmp_path, "--ltx_version", "2.0", "--ltx_version_check_mode",
                                                       "off", "--shifted_logit_mode", "stretched"))).logit_mode == "stretched"
    plain = SigmaSampler.from_args(parse_args(base_argv(files, tmp_path, "--timestep_sampling", "sigma")))
    assert (plain.method, plain.logit_mode) == ("shifted_logit_normal", "stretched")  # musubi reads `sigma` so


def test_musubis_caching_commands_parse_with_their_meaning(capsys):
    """docs/ltx_2.md "Latent Caching Command" and "Text Encoder Caching Command", paths filled in."""
    from ltxv2_diffusers.cli import cache_audio_latents, cache_latents, cache_text
    from ltxv2_diffusers.cli.common import mode_of, warn_ignored

    latents = ("--dataset_config dataset.toml --ltx2_checkpoint /m/ltx-2.safetensors --device cuda --vae_dtype bf16 "
               "--ltx2_mode av --ltx2_audio_source video").split()
    for module in (cache_latents, cache_audio_latents):
        args = module.build_parser().parse_args(latents)
        assert (args.vae, args.device, mode_of(args)) == ("/m/ltx-2.safetensors", "cuda", LtxMode.AV)
    text = ("--dataset_config dataset.toml --ltx2_checkpoint /m/ltx-2.safetensors --gemma_root /gemma "
            "--gemma_load_in_8bit --device cuda --mixed_precision bf16 --ltx2_mode av --batch_size 1").split()
    args = cache_text.build_parser().parse_args(text)
    assert (args.ltxv2_model, args.text_encoder, mode_of(args)) == ("/m/ltx-2.safetensors", "/gemma", LtxMode.AV)
    warn_ignored(args)
    err = capsys.readouterr().err
    assert "--gemma_load_in_8bit is accepted for compatibility and ignored" in err
    assert "--mixed_precision is accepted for compatibility and ignored" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="the rule is for machines without CUDA")
def test_musubis_activation_offload_is_ours_and_ignored_without_cuda(files, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ltxv2_diffusers.training.args"):
        args = parse_args(base_argv(files, tmp_path, "--gradient_checkpointing", "--gradient_checkpointing_cpu_offload"))
    assert args.offload_activations is False and any("--offload_activations has no effect" in r.getMessage()
                                                     for r in caplog.records)
    args = parse_args(base_argv(files, tmp_path, "--gradient_checkpointing_cpu_offload"), validate=False)
    assert args.offload_activations is True  # the alias sets our flag
