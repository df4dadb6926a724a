"""The memory planner on the CPU: its predicted peaks against the peaks measured at full size, and its
choices for a table of (model, tokens, budget) cases."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ltxv2_diffusers.models.presets import preset_config
from ltxv2_diffusers.speed import planner
from ltxv2_diffusers.speed.options import SpeedOptions, parse_memory_budget
from ltxv2_diffusers.speed.planner import Fixed, ModelFigures, Plan, Workload, plan_memory, predict_peak
from ltxv2_diffusers.speed.run_plan import RunPlan

GiB = 2**30
FULL = Workload(video_tokens=6144, audio_tokens=126)  # 768x512x121 + audio
VALIDATION = Workload(video_tokens=12 * 17 * 30, audio_tokens=93)  # 960x544x89, the official trainer's validation
IMAGE = Workload(video_tokens=16 * 24, audio_tokens=1)  # one 768x512 frame
LONG = Workload(video_tokens=31 * 22 * 40, audio_tokens=252)  # 1280x720x241 + audio, as 1280x704 (sides are multiples of 32)


@pytest.fixture(scope="module")
def full() -> ModelFigures:
    """The 19B AV transformer (LTX-2.0 preset) with a rank-32 LoRA, counted on the meta device."""
    return ModelFigures.from_config(preset_config("ltx-2.0")["transformer"], "av", 32)


def test_full_size_figures_are_counted_from_the_config(full):
    assert full.num_blocks == 48 and full.video_width == 4096 and full.audio_width == 2048
    assert 0.70 < full.block_bytes / GiB < 0.74  # ~745 MiB of frozen matrices per block
    assert 0.49 < full.block_quantized_bytes / full.block_bytes < 0.51
    assert full.lora_params == 213_909_504  # rank 32 on to_q/k/v/out.0 of the six attentions per block
    assert 34.9 < (full.num_blocks * (full.block_bytes + full.block_vector_bytes) + full.other_bytes) / GiB < 35.5


@pytest.mark.parametrize("plan, measured_gib", [
    (Plan(42, 48, offload_optimizer=True), 44.5),  # the fastest bf16 recipe
    (Plan(40, 44, offload_optimizer=True), 43.3),
    (Plan(40, 48, offload_optimizer=True, base="fp8"), 43.1),
    (Plan(0, 0), 44.2),  # --gradient_checkpointing alone
    (Plan(8, 0, rerun=True, offload_optimizer=True, base="int8"), 20.7),  # --low_memory --offload_optimizer
    (Plan(0, 48, offload_optimizer=True, base="fp8"), 57.0),
])
def test_predicted_peaks_match_the_measured_full_size_peaks(full, plan, measured_gib):
    """Peaks measured on H100/H200 at 768x512x121 (benchmarks/history.md)."""
    assert predict_peak(full, FULL, plan) / GiB == pytest.approx(measured_gib, abs=1.0)


@pytest.mark.parametrize("work, budget, expect", [
    # a large card: nothing streamed, no block recomputes a matmul, the optimizer stays on the GPU
    (FULL, 139, dict(blocks_to_swap=0, blocks_without_recompute=48, rerun=False, offload_optimizer=False, base="bf16")),
    # an 80 GB card: a few streamed blocks pay for keeping every block's outputs
    (FULL, 76, dict(blocks_without_recompute=48, rerun=False, base="bf16")),
    # between steps every weight of a spread-swapping run is back on the GPU: below ~38 GiB only re-runs fit
    (FULL, 36, dict(rerun=True, base="bf16")),
    (FULL, 24, dict(rerun=True, offload_optimizer=True, base="bf16")),
    (FULL, 16, dict(rerun=True, offload_optimizer=True, base="bf16")),
    (FULL, 16, dict(offload_activations=False)),  # block inputs stay on the GPU while they fit
    # below that the block inputs go to host memory before the weights are quantized
    (FULL, 8, dict(rerun=True, offload_optimizer=True, offload_activations=True, base="bf16")),
    (FULL, 6, dict(rerun=True, offload_optimizer=True, offload_activations=True, base="int8")),
    # long clips: 48 block inputs of 214 MiB each outweigh the blocks' weights
    (LONG, 16, dict(rerun=True, offload_activations=True, base="bf16")),
    (VALIDATION, 24, dict(rerun=True, base="bf16")),
    (IMAGE, 139, dict(blocks_to_swap=0, blocks_without_recompute=48, base="bf16")),
    (IMAGE, 16, dict(rerun=True, base="bf16")),
])
def test_plans_fit_their_budget_and_choose_the_expected_levers(full, work, budget, expect):
    plan = plan_memory(full, work, budget)
    assert plan.fits and plan.peak_gib * GiB <= planner.allocatable(full, work, budget)
    assert {k: getattr(plan, k) for k in expect} == expect
    line = plan.describe()
    assert "\n" not in line and f"of a {budget:.1f} GiB budget" in line and "s/step" in line
    # the fastest that fits: no cheaper plan (fewer streamed blocks) fits
    if plan.blocks_to_swap and not plan.rerun:
        fewer = dataclasses.replace(plan, blocks_to_swap=plan.blocks_to_swap - 1)
        assert predict_peak(full, work, fewer) > planner.allocatable(full, work, budget) \
            or planner.predict_seconds(full, work, fewer) >= plan.seconds


def test_smaller_budgets_never_plan_more_memory_or_less_time(full):
    plans = [plan_memory(full, FULL, b) for b in (139, 76, 48, 36, 24, 16, 12)]
    assert all(a.peak_gib >= b.peak_gib for a, b in zip(plans, plans[1:]))
    assert all(a.seconds <= b.seconds + 1e-9 for a, b in zip(plans, plans[1:]))


def test_hand_set_levers_are_kept(full):
    plan = plan_memory(full, FULL, 48, fixed=Fixed(blocks_to_swap=40, base="fp8"))
    assert plan.blocks_to_swap == 40 and plan.base == "fp8" and plan.fits
    options = SpeedOptions.for_device("cuda", blocks_to_swap=40, fp8_base=True, memory_budget=48.0)
    assert options.planned and options.fixed == {"blocks_to_swap", "base"}
    chosen = planner.plan_for(options, full, FULL, 48.0)
    assert chosen.blocks_to_swap == 40 and chosen.base == "fp8"
    applied = planner.planned_options(options, chosen)
    assert applied.fp8_base and applied.blocks_to_swap == 40 and applied.recompute in ("compiled", "checkpoint")
    # --no_compile: only whole-block re-runs recompute
    assert planner.plan_for(SpeedOptions.for_device("cuda", compile=False, memory_budget=139.0), full, FULL, 139).rerun


def test_a_plan_that_does_not_fit_says_what_would(full):
    plan = plan_memory(full, FULL, 5)
    assert not plan.fits and "DOES NOT FIT" in plan.describe()
    why = planner.explain(full, FULL, plan)
    assert why.startswith("nothing fits 5.0 GiB: the leanest plan needs about 5.7 GiB") and "--memory_budget 6" in why
    assert "buckets of at most" in why  # fewer tokens per batch would fit
    smaller = int(why.split("buckets of at most ")[1].split()[0])
    assert plan_memory(full, dataclasses.replace(FULL, video_tokens=smaller, audio_tokens=0), 5).fits
    # below what the weights alone need, fewer tokens do not help: only a larger budget is named
    assert "buckets" not in planner.explain(full, FULL, plan_memory(full, FULL, 3))


def test_a_correction_after_an_overshoot_plans_less_memory(full):
    options = SpeedOptions.for_device("cuda", memory_budget=24.0)
    first = planner.plan_for(options, full, FULL, 24.0)
    again = planner.plan_for(options, full, FULL, 24.0, correction=1.2)
    assert again.peak_gib < first.peak_gib and again.budget_gib == 24.0 and again.fits


def test_figures_of_a_real_tiny_model_match_its_tensors():
    from ltxv2_diffusers.lora import add_lora
    from ltxv2_diffusers.models.presets import build_components

    transformer = build_components("tiny", components=("transformer",))["transformer"]
    add_lora(transformer, "av", 4, 4)
    lora = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n)
    fig = ModelFigures.from_transformer(transformer, lora, min_features=16)
    frozen = sum(p.numel() * 2 for n, p in transformer.named_parameters() if "lora_" not in n)
    blocks = fig.num_blocks * (fig.block_bytes + fig.block_vector_bytes)
    assert blocks + fig.other_bytes == frozen
    from_config = ModelFigures.from_config(dict(transformer.config), "av", 4, min_features=16)
    assert from_config == fig


def test_memory_budget_values():
    assert parse_memory_budget("auto") == "auto" and parse_memory_budget("off") is None
    assert parse_memory_budget("24") == 24.0 and parse_memory_budget("15.5GiB") == 15.5
    for bad in ("0", "-1", "lots"):
        with pytest.raises(ValueError, match="--memory_budget must be"):
            parse_memory_budget(bad)
    assert not SpeedOptions.for_device("cpu", memory_budget=16.0).planned  # the CPU path is eager fp32
    assert not SpeedOptions.for_device("cuda", low_memory=True, memory_budget=16.0).planned  # a fixed recipe
    assert SpeedOptions.for_device("cuda", memory_budget="auto").planned
    assert torch.float32 == SpeedOptions.for_device("cpu").compute_dtype


def test_the_largest_batch_is_read_from_the_cache_shapes(tmp_path, bench_script):
    """What the trainer plans for: the bucket with the most latent tokens per batch, from file headers."""
    from ltxv2_diffusers.data.batching import BatchManager, CacheSource

    data_loading = bench_script("data_loading")
    small = dict(latents=(128, 2, 2, 3), audio=(8, 6, 16), text=(8, 48))
    large = dict(latents=(128, 3, 4, 6), audio=(8, 10, 16), text=(8, 48))
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    data_loading.write_items(str(tmp_path / "small"), 4, small)
    data_loading.write_items(str(tmp_path / "large"), 1, large)
    sources = [CacheSource(str(tmp_path / "small"), batch_size=2), CacheSource(str(tmp_path / "large"), batch_size=2)]
    assert BatchManager(sources, "av").largest_batch() == {"batch": 1, "video": 72, "audio": 10}  # 1 item: batch 1
    assert BatchManager(sources[:1], "av").largest_batch() == {"batch": 2, "video": 12, "audio": 6}
    assert BatchManager(sources[:1], "video").largest_batch() == {"batch": 2, "video": 12, "audio": 0}


@pytest.mark.slow
def test_a_first_step_over_the_budget_re_plans_and_trains(tmp_path_factory, tmp_path, monkeypatch, capsys):
    """The trainer's planned path with the measurement stubbed (no GPU here): the tiny model as the CUDA path
    would plan it (eager, so whole blocks re-run), a budget its fastest bf16 plan just fits, and a first-step
    check that reports 97 % of the budget reserved: the trainer re-plans once with the measured error,
    rebuilds the model with the leaner plan (int8 base weights), and trains to the end."""
    from conftest import baseline_argv, workspace

    from ltxv2_diffusers.training.args import parse_args
    from ltxv2_diffusers.training.trainer import Trainer

    ws = workspace(tmp_path_factory)
    original = SpeedOptions.for_device.__func__

    def for_device(cls, device, **kwargs):  # the choices CUDA would get, run eager on this CPU
        options = original(cls, "cuda", **kwargs)
        return dataclasses.replace(options, compile=False, quantize_min_features=16)

    monkeypatch.setattr(SpeedOptions, "for_device", classmethod(for_device))
    budget = {}
    original_make = RunPlan.make.__func__

    def make(cls, *args, **kwargs):  # a budget just enough for the leanest bf16 plan of this run
        run = original_make(cls, *args, **kwargs)
        lean = planner.plan_for(run.requested, run.figures, run.workload, 1.0)
        budget["gib"] = planner.budget_needed(run.figures, run.workload, lean.peak_gib * GiB) * 1.01
        return dataclasses.replace(run, budget_gib=budget["gib"])

    probes = []

    def probe(self, entry, passes=2):
        probes.append(self.plan)
        return self.plan.peak_gib, 0.97 * budget["gib"]  # reserved: over the 95 % of the budget it may use

    monkeypatch.setattr(planner, "resolve_budget", lambda value, device=None: 1.0)  # no CUDA here
    monkeypatch.setattr(RunPlan, "make", classmethod(make))
    monkeypatch.setattr(Trainer, "_probe", probe)
    args = parse_args(baseline_argv(ws, tmp_path, steps=2, extra=["--memory_budget", "auto"]))
    asked = dict(vars(args))
    trainer = Trainer(args)
    lora = trainer.run()
    # the plan lives in the speed options, not in the user's flags (saved with the LoRA and checkpoints)
    assert {k: v for k, v in vars(args).items() if k in asked and v != asked[k]} == {}
    out = capsys.readouterr().out
    assert lora.is_file() and len(probes) == 1  # one check, one re-plan, no second check
    assert out.count("memory plan: ") == 3 and "re-planning for" in out
    assert trainer.plan.peak_gib < probes[0].peak_gib and trainer.plan.fits
    assert probes[0].base == "bf16" and trainer.plan.base == "int8" and trainer.speed.quantized_layers > 0
    assert trainer.plan.budget_gib == pytest.approx(budget["gib"])


@pytest.fixture
def any_host(monkeypatch):
    """Run plans made as on a host whose free memory is unknown (not checked), whatever this machine has."""
    from ltxv2_diffusers.speed import run_plan

    monkeypatch.setattr(run_plan, "available_host_memory", lambda: None)


def test_a_continued_lora_is_planned_with_the_size_of_its_file(tmp_path, any_host):
    """`--network_weights`: the LoRA trained on is the file's (its ranks), not `--network_dim`'s; counted from
    the file's header."""
    from conftest import tiny_lora_model

    from ltxv2_diffusers.lora import lora_from_model, lora_parameter_count, save_lora

    model = tiny_lora_model(torch.float32)
    path, _ = save_lora(lora_from_model(model), tmp_path, "rank4")
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(path) == trained
    config = preset_config("ltx-2.0")["transformer"]
    largest = {"batch": 1, "video": FULL.video_tokens, "audio": FULL.audio_tokens}
    options = SpeedOptions.for_device("cuda", memory_budget=24.0)
    by_flag = RunPlan.make(options, config, largest, mode="av", rank=32)
    by_file = RunPlan.make(options, config, largest, mode="av", rank=32, lora_params=4 * by_flag.figures.lora_params)
    assert by_file.figures.lora_params == 4 * by_flag.figures.lora_params
    assert by_file.choose() and by_flag.choose()
    assert by_file.plan.peak_gib > by_flag.plan.peak_gib or by_file.plan.seconds > by_flag.plan.seconds


def test_the_first_steps_verdict(any_host):
    """Under 95 % of the budget (reserved) confirms; over it, or out of memory, re-plans with the error."""
    run = RunPlan.make(SpeedOptions.for_device("cuda", memory_budget=24.0), preset_config("ltx-2.0")["transformer"],
                       {"batch": 1, "video": FULL.video_tokens, "audio": FULL.audio_tokens}, mode="av", rank=32)
    options = run.choose()
    assert options.gradient_checkpointing and options.blocks_to_swap == run.plan.blocks_to_swap
    ok = run.verdict((run.plan.peak_gib, 22.0))
    assert ok.correction is None and ok.message.startswith("memory plan confirmed")
    over = run.verdict((run.plan.peak_gib, 23.5))
    assert over.correction == pytest.approx(1.05 * 23.5 / (24 * 0.95)) and "re-planning" in over.message
    assert run.verdict(None).correction == 1.25
    first = run.plan
    run.choose(over.correction)
    assert run.plan.budget_gib == 24.0 and run.plan.peak_gib <= 24.0 / over.correction * planner.ALLOCATOR_SLACK
    assert run.plan.peak_gib < first.peak_gib


def test_the_predictions_in_docs_speed_are_the_planners(bench_script):
    """docs/speed.md's table of predicted plans is what `benchmarks/planner_predictions.py` prints: each of its
    rows names the same streamed blocks, peak and pinned host memory as the script's row for that clip and
    budget."""
    import re
    from pathlib import Path

    script = bench_script("planner_predictions")
    predicted = {(clip.split()[0], plan.budget_gib): plan for clip, _, _, plan in script.rows("ltx-2.0", "av", 32)}
    docs = (Path(__file__).resolve().parents[1] / "docs" / "speed.md").read_text(encoding="utf-8")
    rows = ("| 960×544×89", "| 768×512 image", "| 1280×720")
    table = [line for line in docs.splitlines() if line.startswith(rows)]
    assert len(table) == 9
    for line in table:
        clip, card, levers, peak, pinned = [c.strip() for c in line.strip("|").split("|")][:5]
        given = re.search(r"--memory_budget (\d+)", card)
        budgets = [float(given.group(1))] if given else \
            [budget for name, budget in script.CARDS if name.split()[0] in card and "auto" in name]
        assert budgets, line
        for budget in budgets:
            plan = predicted[(clip.split()[0], budget)]
            assert peak == f"{plan.peak_gib:.1f} GiB", line
            assert pinned == f"{plan.host_gib:.1f} GiB", line
            assert levers.startswith(f"{plan.base}, {plan.blocks_to_swap} streamed"), line
            assert ("their inputs in host memory" in levers) == plan.offload_activations, line


def test_offloaded_activations_as_options():
    """A hand-set `--offload_activations` is kept by the planner, which then re-runs whole blocks; without the
    planner it needs whole-block re-runs, and it excludes blocks that keep their outputs."""
    options = SpeedOptions.for_device("cuda", offload_activations=True, memory_budget=139.0)
    assert options.problems(48) == [] and "offload_activations" in options.fixed
    full = ModelFigures.from_config(preset_config("ltx-2.0")["transformer"], "av", 32)
    plan = planner.plan_for(options, full, FULL, 139.0)
    applied = planner.planned_options(options, plan)
    assert plan.rerun and plan.offload_activations and applied.offload_activations and applied.recompute == "checkpoint"
    assert "(their inputs in host memory)" in plan.describe()
    by_hand = SpeedOptions.for_device("cuda", offload_activations=True, gradient_checkpointing=True)
    assert any("--offload_activations keeps the inputs of whole-block re-runs" in p for p in by_hand.problems(48))
    assert SpeedOptions.for_device("cuda", offload_activations=True, compile=False,
                                   gradient_checkpointing=True).problems(48) == []
    both = SpeedOptions.for_device("cuda", offload_activations=True, blocks_without_recompute=4, compile=False,
                                   gradient_checkpointing=True)
    assert any("exclude each other" in p for p in both.problems(48))
    on_cpu = SpeedOptions.for_device("cpu", offload_activations=True, gradient_checkpointing=True)
    assert any("--offload_activations need a CUDA device" in p for p in on_cpu.problems(48))


@pytest.mark.parametrize("host_gib, mapped, budget, expect", [
    (None, True, 16, dict(blocks_to_swap=39, base="bf16")),
    # a bf16 checkpoint stays mapped: only the pinned copies count (39 blocks of 0.72 GiB, the optimizer's 3 GiB)
    (36, True, 16, dict(blocks_to_swap=39, base="bf16")),
    (32, True, 16, dict(base="int8")),  # too little for them: int8 blocks pin half as much
    # quantized block by block on the device on their way to the pinned copies: the int8 model never sits in
    # process memory, so a host with 16 GiB free (docs/speed.md) streams as many int8 blocks as the budget needs
    (16, True, 16, dict(base="int8", blocks_to_swap=32)),
    # a checkpoint in another dtype is cast in process memory (34.5 GiB of blocks) before blocks are copied
    (48, False, 16, dict(base="int8")),
])
def test_plans_fit_the_host_memory_too(full, host_gib, mapped, budget, expect):
    host = None if host_gib is None else planner.Host(host_gib * GiB, checkpoint_mapped=mapped)
    plan = plan_memory(full, FULL, budget, host=host)
    assert plan.fits and {k: getattr(plan, k) for k in expect} == expect
    assert planner.fits_host(full, FULL, plan, host)
    streamed, pinned = planner.host_bytes(full, FULL, plan)
    assert streamed == plan.blocks_to_swap * acceleration_pinned(full, plan)
    if host is not None:
        assert pinned <= planner.HOST_SHARE * host.available
        assert f"{pinned / GiB:.1f} GiB of host memory pinned" in plan.describe()


def acceleration_pinned(full, plan):
    """One streamed block's pinned copy: its bytes in power-of-two pieces, less than one granule over."""
    from ltxv2_diffusers.speed.pinned import GRANULE, held_bytes

    w = full.block_bytes if plan.base == "bf16" else full.block_quantized_bytes
    assert w <= held_bytes(w) < w + GRANULE
    return held_bytes(w)


def test_a_host_too_small_is_named(full):
    """A budget that streaming would meet on a larger host names the host memory that would do; hand-set
    levers that pin more than the host has are named as such."""
    import re

    host = planner.Host(8 * GiB)
    plan = plan_memory(full, FULL, 16, host=host)
    assert not plan.fits  # too little room to stream enough from
    why = planner.explain(full, FULL, plan, host)
    assert "GiB of free host memory (now 8) to stream blocks from" in why
    need = int(re.search(r"or (\d+) GiB of free host memory", why).group(1))
    assert plan_memory(full, FULL, 16, host=planner.Host(need * GiB)).fits
    assert not plan_memory(full, FULL, 16, host=planner.Host((need - 1) * GiB)).fits
    fixed = Fixed(blocks_to_swap=40)
    small = planner.Host(10 * GiB)
    plan = plan_memory(full, FULL, 16, host=small, fixed=fixed)
    assert not plan.fits
    why = planner.explain(full, FULL, plan, small, fixed)
    assert why.startswith("nothing fits 16.0 GiB with the host memory available (10.0 GiB for this process)")
    assert "run fewer processes on this host" in why


def test_the_run_plan_shares_the_host_memory_between_the_processes_on_it(monkeypatch):
    from ltxv2_diffusers.speed import run_plan

    monkeypatch.setattr(run_plan, "available_host_memory", lambda: 64 * GiB)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert run_plan.host_memory("BF16") == planner.Host(32 * GiB, checkpoint_mapped=True)
    assert run_plan.host_memory(None) == planner.Host(32 * GiB, checkpoint_mapped=False)
    monkeypatch.setattr(run_plan, "available_host_memory", lambda: None)
    assert run_plan.host_memory("BF16") is None


@pytest.mark.parametrize("preset", ["ltx-2.0", "ltx-2.3", "ltx-2.5"])
@pytest.mark.parametrize("mode", ["av", "video", "audio"])
def test_every_preset_and_mode_plans_within_the_small_budgets(preset, mode):
    """The full-size presets and the three modes: figures from their configs, the LoRA each mode trains (av
    holds both modalities' attention LoRAs), and a plan that fits 24 and 16 GiB at 768x512x121 (audio: the
    1-token video dummy) in bf16, streaming more blocks for the smaller budget."""
    fig = ModelFigures.from_config(preset_config(preset)["transformer"], mode, 32)
    assert fig.num_blocks == 48 and 0.70 < fig.block_bytes / GiB < 0.74
    video_only = ModelFigures.from_config(preset_config(preset)["transformer"], "video", 32)
    if mode == "av":
        assert fig.lora_params > video_only.lora_params
    work = Workload(video_tokens=1 if mode == "audio" else 6144, audio_tokens=0 if mode == "video" else 126)
    plans = [plan_memory(fig, work, budget) for budget in (24, 16)]
    assert all(p.fits and p.base == "bf16" and p.peak_gib <= b * planner.ALLOCATOR_SLACK
               for p, b in zip(plans, (24, 16)))
    assert plans[1].blocks_to_swap > plans[0].blocks_to_swap


def test_a_plan_quantized_for_lack_of_host_memory_says_so(monkeypatch):
    """int8 chosen because the host cannot pin a bf16 plan: the plan line says what bf16 would pin and what is
    free; with the host memory to spare the same budget plans bf16 and says nothing of it."""
    from ltxv2_diffusers.speed import run_plan

    options = SpeedOptions.for_device("cuda", memory_budget=16.0)
    config = preset_config("ltx-2.0")["transformer"]
    largest = {"batch": 1, "video": 6144, "audio": 126}
    monkeypatch.setattr(run_plan, "available_host_memory", lambda: 20 * GiB)
    small = run_plan.RunPlan.make(options, config, largest, mode="av", rank=32, checkpoint_dtype="BF16")
    small.choose()
    assert small.plan.base == "int8"
    assert small.describe().endswith("(int8 base: a bf16 plan would pin 31.0 GiB of host memory, 20.0 GiB is free "
                                     "for this process)")
    monkeypatch.setattr(run_plan, "available_host_memory", lambda: 64 * GiB)
    roomy = run_plan.RunPlan.make(options, config, largest, mode="av", rank=32, checkpoint_dtype="BF16")
    roomy.choose()
    assert roomy.plan.base == "bf16" and "would pin" not in roomy.describe()


def test_the_small_desktop_walkthrough_shows_the_planners_own_lines(monkeypatch):
    """docs/speed.md's 24 GB card / 32 GB desktop walkthrough quotes plan lines: the planner prints them."""
    import re
    from pathlib import Path

    from ltxv2_diffusers.speed import run_plan

    docs = (Path(__file__).resolve().parents[1] / "docs" / "speed.md").read_text(encoding="utf-8")
    section = docs.split("## A 24 GB card in a 32 GB desktop, end to end")[1].split("\n## ")[0]
    quoted = re.search(r"the\s+plan is `([^`]+)`", section).group(1)
    config = preset_config("ltx-2.0")["transformer"]
    largest = {"batch": 1, "video": 6144, "audio": 126}

    def line(free_gib):
        monkeypatch.setattr(run_plan, "available_host_memory", lambda: free_gib * GiB)
        plan = run_plan.RunPlan.make(SpeedOptions.for_device("cuda", memory_budget=22.0), config, largest,
                                     mode="av", rank=32, checkpoint_dtype="BF16")
        plan.choose()
        return plan.describe()

    assert line(24) == "memory plan: " + re.sub(r"\s+", " ", quoted)
    roomy = line(28)
    assert "bf16 base, 34 blocks streamed" in roomy and "24.4 GiB of host memory pinned" in roomy
    assert "bf16 with 34 blocks streamed (24.4 GiB" in re.sub(r"\s+", " ", section)


def test_large_activations_leave_the_allocator_room_for_its_fragments(full):
    """Measured at 1280x720x241 under a 16 GiB cap (H200, benchmarks/RESULTS.md): a plan predicted at
    14.4 GiB allocated ran out of memory with 1.8 GiB reserved but unallocated when it asked for an
    854 MiB feed-forward activation. Plans for such clips keep that much below the budget."""
    work = LONG
    ffn = work.video_tokens * full.widest_output * 2
    assert ffn / 2**20 == pytest.approx(854, abs=2)  # the allocator asks in 2 MiB steps
    plan = plan_memory(full, work, 16)
    assert plan.fits and plan.peak_gib + 1.83 + ffn / GiB <= 16
    assert planner.budget_needed(full, work, plan.peak_gib * GiB) <= 16
    # at the training size the budget's share stays the larger reserve: plans there are unchanged
    assert planner.allocatable(full, FULL, 16) == pytest.approx(16 * GiB * planner.ALLOCATOR_SLACK)
