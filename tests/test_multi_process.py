"""Several processes: resume on another number of processes through a real `accelerate launch` (gloo on
the CPU): with the same global batch, a checkpoint saved by one process continues in two and one saved
by two continues in one, and both end with the LoRA of the uninterrupted run. DDP holds the LoRA only;
accelerate configs that shard or re-wrap the model are refused."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import SAVE_EVERY, STEPS, accelerate_launch, baseline_argv, baseline_run, lora_tensors, workspace
from ltxv2_diffusers.training.logging import read_metrics
from ltxv2_diffusers.training.resume import batching_change
from ltxv2_diffusers.training.ddp import check_distribution, leave_frozen_to_each_process


def _assert_same_run(reference, resumed, first_step: int) -> None:
    a, b = lora_tensors(reference / "demo_lora.safetensors"), lora_tensors(resumed / "demo_lora.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)
    expected = [m for m in read_metrics(reference / "logs" / "metrics.jsonl") if m["step"] >= first_step]
    got = list(read_metrics(resumed / "logs" / "metrics.jsonl"))
    assert [m["step"] for m in got] == list(range(first_step, STEPS + 1))
    assert [m["loss"] for m in got] == pytest.approx([m["loss"] for m in expected], rel=1e-4)
    assert [m["lr"] for m in got] == pytest.approx([m["lr"] for m in expected], rel=1e-6)


def test_batching_change_names_the_batch_size_that_keeps_the_global_batch():
    saved = {"processes": 2, "global_batch_sizes": [4, 2]}
    assert batching_change(saved, dict(saved), "ck") is None
    assert batching_change(None, saved, "ck") is None  # older checkpoints did not record it
    kind, message = batching_change(saved, {"processes": 4, "global_batch_sizes": [4, 2]}, "ck")
    assert kind == "info" and "saved by 2 process(es), continuing on 4" in message
    # the user kept batch_size (per process) while halving the processes: the global batch halves
    kind, message = batching_change(saved, {"processes": 1, "global_batch_sizes": [2, 1]}, "ck")
    assert kind == "warning" and "from [4, 2] to [2, 1]" in message and "batch_size = 4, 2" in message
    kind, message = batching_change(saved, {"processes": 4, "global_batch_sizes": [8, 4]}, "ck")
    assert kind == "warning" and "batch_size = 1, (none: 2 does not split over 4)" in message


def test_sharding_accelerate_configs_are_refused_with_the_fix():
    from accelerate.utils import DistributedType

    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        check_distribution(kind)
    for kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ValueError, match=rf"distributed_type {kind.name} is not supported; use MULTI_GPU"):
            check_distribution(kind)


def test_ddp_leaves_the_frozen_base_to_each_process(tmp_path):
    """A frozen base held elsewhere than the LoRA (on GPUs: blocks swapped to host memory) makes DDP refuse
    the model; once the frozen tensors are DDP-ignored, DDP holds (syncs, all-reduces) the LoRA only."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        model[0].requires_grad_(False)
        model[0].to("meta")  # a device type other than the trainable layer's, as swapped blocks are
        model.register_buffer("stats", torch.ones(3))
        with pytest.raises(ValueError, match="same type of devices"):
            DistributedDataParallel(model)
        assert sorted(leave_frozen_to_each_process(model)) == ["0.bias", "0.weight", "stats"]
        ddp = DistributedDataParallel(model)
        assert [id(p) for p in ddp._module_parameters] == [id(p) for p in model[1].parameters()]
    finally:
        if created:
            dist.destroy_process_group()


@pytest.mark.slow
def test_resume_across_world_sizes(tmp_path_factory, tmp_path):
    ws = workspace(tmp_path_factory)
    single = baseline_run(tmp_path_factory)  # 1 process, batch_size 2, checkpoints every SAVE_EVERY steps
    # Two processes with batch_size 1 each: the same global batch of 2 (dataset paths stay relative to it).
    per_process = ws.dataset_config.with_name("dataset_per_process_resume.toml")
    text = ws.dataset_config.read_text(encoding="utf-8")
    assert "batch_size = 2" in text
    per_process.write_text(text.replace("batch_size = 2", "batch_size = 1"), encoding="utf-8")

    # saved by 1 process at step 2 -> continued by 2 processes to the end; with gradient checkpointing
    # there, whose recompute must not disturb DDP's gradient sync (and changes no value), and musubi's DDP
    # options, which change how DDP syncs, not what
    two = tmp_path / "two"
    start = single / "checkpoints" / f"step-{SAVE_EVERY:08d}"
    proc = accelerate_launch(baseline_argv(ws, two, extra=["--dataset_config", str(per_process), "--resume", str(start),
                                                          "--gradient_checkpointing", "--ddp_gradient_as_bucket_view",
                                                          "--ddp_find_unused_parameters"]), num_processes=2)
    assert "saved by 1 process(es), continuing on 2 with the same global batch" in proc.stdout
    assert "global batch: 2 item(s) (each dataset's batch_size x 2 processes) x 2 per optimizer step" in proc.stdout
    _assert_same_run(single, two, SAVE_EVERY + 1)

    # saved by those 2 processes at step 4 -> continued by 1 process to the end
    saved_by_two = two / "checkpoints" / f"step-{2 * SAVE_EVERY:08d}"
    state = json.loads((saved_by_two / "training_state.json").read_text(encoding="utf-8"))
    assert state["batching"] == {"processes": 2, "global_batch_sizes": [2]}
    one = tmp_path / "one"
    proc = accelerate_launch(baseline_argv(ws, one, extra=["--resume", str(saved_by_two)]))
    assert "saved by 2 process(es), continuing on 1 with the same global batch" in proc.stdout
    _assert_same_run(single, one, 2 * SAVE_EVERY + 1)
