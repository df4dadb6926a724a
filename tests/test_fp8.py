"""fp8 base weights (`--fp8_base`): e4m3 storage with per-channel scales and fp8 matmuls stay within
e4m3 rounding of the full-precision layer, compile to the same gradients as eager, swap like any
frozen weight, and are refused where a GPU cannot multiply in fp8."""

import pytest
import torch

from ltxv2_diffusers import speed as acceleration
from ltxv2_diffusers.speed.quant import fp8
from ltxv2_diffusers.speed.quant.fp8 import E4M3_MAX, fp8_supported, quantize_rows
from ltxv2_diffusers.models.adapter import LTXAVModelAdapter
from ltxv2_diffusers.speed.setup import SpeedOptions, apply_speed_options

from conftest import adapter_loss, lora_grads, tiny_batch, tiny_lora_model

# e4m3 keeps 3 mantissa bits: a random matmul's output is off by about 3.6 % (relative L2 norm)
E4M3_TOLERANCE = 0.06


def _relative(a, b):
    return float((a.detach().float() - b.detach().float()).norm() / b.detach().float().norm())


def test_quantize_rows_is_exact_on_e4m3_values_and_scales_each_row_to_the_range():
    rows = torch.tensor([[1.0, -0.5, 0.25, 0.0], [3.0, 6.0, -12.0, 1.5], [0.0, 0.0, 0.0, 0.0]])
    q, scale = quantize_rows(rows)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (3, 1) and scale.dtype == torch.float32
    assert torch.equal(q.float() * scale, rows)  # powers-of-two multiples of e4m3 values survive
    assert q.float().abs().amax(dim=1)[:2].tolist() == [E4M3_MAX, E4M3_MAX]  # each row uses the whole range
    assert torch.isfinite(scale).all() and scale[2] > 0  # an all-zero row gets a usable scale


@pytest.mark.parametrize("how", fp8.SCALINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_linear_forward_and_input_gradient_within_e4m3_rounding(dtype, how, monkeypatch):
    """Each way of scaling the fp8 products (row-wise kernel, fast accumulation, tensor-wise plus a scaling
    pass) gives the layer within e4m3 rounding, and the same result up to the output dtype's rounding."""
    monkeypatch.setattr(fp8, "scaling", how)
    torch.manual_seed(0)
    linear = torch.nn.Linear(512, 384).requires_grad_(False).to(dtype)
    fp8_layer = acceleration.Fp8Linear(linear)
    assert fp8_layer.qweight.dtype == torch.float8_e4m3fn and fp8_layer.qweight.shape == (384, 512)
    assert fp8_layer.scale.shape == (1, 384) and fp8_layer.scale.dtype == torch.float32
    assert _relative(fp8_layer.weight, linear.weight) < E4M3_TOLERANCE / 2
    x = torch.randn(3, 5, 512, dtype=dtype, requires_grad=True)
    x8 = x.detach().clone().requires_grad_(True)
    y, y8 = linear(x), fp8_layer(x8)
    assert y8.dtype == dtype and y8.shape == y.shape
    assert _relative(y8, y) < E4M3_TOLERANCE
    grad = torch.randn_like(y)
    y.backward(grad)
    y8.backward(grad)
    assert x8.grad.dtype == dtype
    assert _relative(x8.grad, x.grad) < E4M3_TOLERANCE
    # the per-channel weight scales fold into the output gradient: same result as the dequantized weight
    exact = (grad.float().reshape(-1, 384) @ fp8_layer.weight.float()).reshape(x.shape)
    assert _relative(x8.grad, exact) < E4M3_TOLERANCE
    monkeypatch.setattr(fp8, "scaling", "rowwise")
    x_row = x.detach().clone().requires_grad_(True)
    fp8_layer(x_row).backward(grad)
    rounding = 1e-6 if dtype == torch.float32 else 2 ** -7
    assert _relative(fp8_layer(x.detach()), y8) < rounding and _relative(x_row.grad, x8.grad) < rounding


def test_fp8_base_weights_replace_only_frozen_layers_fp8_can_take():
    model = tiny_lora_model(torch.float32, num_layers=2)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    linears = [m for m in model.transformer_blocks.modules() if isinstance(m, torch.nn.Linear)]
    count = acceleration.fp8_base_weights(model, min_features=16)
    fp8 = [m for m in model.modules() if isinstance(m, acceleration.Fp8Linear)]
    assert count == len(fp8) > 10
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == trainable  # LoRA untouched
    lora = sum("lora_" in n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear))
    assert len(linears) == count + lora  # the tiny model's base linears are all multiples of 16 wide
    assert acceleration.fp8_base_weights(model, min_features=16) == 0  # already replaced
    odd = torch.nn.Linear(24, 40)
    assert not fp8_supported(odd) and fp8_supported(torch.nn.Linear(32, 48))


def _fp8_run(**options):
    torch._dynamo.reset()
    model = tiny_lora_model(torch.float32, num_layers=2)
    model.enable_gradient_checkpointing()
    setup = apply_speed_options(model, SpeedOptions(naive=False, compute_dtype=torch.float32, fp8_base=True,
                                                    quantize_min_features=16, **options), device="cpu")
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), tiny_batch())
    loss.backward()
    torch._dynamo.reset()
    return setup, loss.detach(), lora_grads(model)


@pytest.mark.slow  # compiles
def test_fp8_gradients_compiled_equal_eager_and_stay_near_full_precision():
    """The compiled blocks (one recomputing, one keeping matmul outputs, as the fast path mixes them)
    give the eager fp8 gradients; both are within e4m3 rounding of the full-precision model's."""
    torch._dynamo.reset()
    ref = tiny_lora_model(torch.float32, num_layers=2)
    ref_loss = adapter_loss(LTXAVModelAdapter.from_components(ref), tiny_batch())
    ref_loss.backward()
    ref_grads = lora_grads(ref)

    setup, loss, grads = _fp8_run(compile=False)
    assert "fp8 base weights and matmuls (56 layers)" in setup.summary()
    _, compiled_loss, compiled_grads = _fp8_run(blocks_without_recompute=1,
                                                compile_backend="aot_eager_decomp_partition")
    assert set(grads) == set(compiled_grads) == set(ref_grads) and len(grads) > 10
    torch.testing.assert_close(compiled_loss, loss, atol=1e-6, rtol=1e-6)
    for name in grads:
        torch.testing.assert_close(compiled_grads[name], grads[name], atol=1e-6, rtol=1e-5, msg=name)
    assert abs(float(loss) - float(ref_loss.detach())) / float(ref_loss.detach()) < 0.01
    flat = torch.cat([grads[n].flatten() for n in ref_grads])
    ref_flat = torch.cat([ref_grads[n].flatten() for n in ref_grads])
    assert 0.002 < _relative(flat, ref_flat) < E4M3_TOLERANCE  # really fp8, and close


def test_swapped_fp8_blocks_give_the_resident_gradients():
    """The fp8 weights and scales are buffers; the block swapper streams them like bf16 weights (here
    re-fetched by the backward re-run, as with --low_memory --fp8_base)."""
    _, loss, grads = _fp8_run(compile=False)
    setup, swapped_loss, swapped_grads = _fp8_run(compile=False, blocks_to_swap=1)
    assert setup.swapper is not None and setup.swapper.swapped == [1]
    assert any(name == "qweight" and dtype == torch.float8_e4m3fn
               for _, name, dtype, *_ in setup.swapper.stores[1].entries)
    torch.testing.assert_close(swapped_loss, loss)
    for name in grads:
        torch.testing.assert_close(swapped_grads[name], grads[name], msg=name)


def test_fp8_needs_a_gpu_that_multiplies_in_fp8(monkeypatch):
    acceleration.check_fp8_device("cpu")  # slow but exact: the tests' path
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ValueError, match=r"--fp8_base needs fp8 matmuls .* NVIDIA A100-SXM4-80GB is sm_80.*--low_memory"):
        acceleration.check_fp8_device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    acceleration.check_fp8_device("cuda")


def test_fp8_flags():
    from ltxv2_diffusers.training.args import parse_args

    assert parse_args(["--fp8_scaled"], validate=False).fp8_base  # musubi's spelling
    low = SpeedOptions.for_device("cuda", low_memory=True, fp8_base=True)
    assert low.fp8_base and not low.int8_base and low.blocks_to_swap == 8  # fp8 replaces int8 in --low_memory
    assert SpeedOptions.for_device("cuda", low_memory=True).int8_base
    assert SpeedOptions.for_device("cpu", fp8_base=True).fp8_base


def _losses_over_a_short_run(steps: int = 20, **options) -> tuple[list[float], object]:
    torch.manual_seed(0)
    model = tiny_lora_model(torch.float32, num_layers=2)
    setup = apply_speed_options(model, SpeedOptions(naive=False, compute_dtype=torch.float32, compile=False,
                                                    quantize_min_features=16, **options), device="cpu")
    optimizer = setup.make_optimizer(torch.optim.AdamW, lr=2e-3)
    adapter, batch, losses = LTXAVModelAdapter.from_components(model), tiny_batch(), []
    for _ in range(steps):
        loss = adapter_loss(adapter, batch)
        loss.backward()
        setup.update(optimizer, model)
        losses.append(float(loss.detach()))
    return losses, setup


# the 16 GiB mode's shape on a small host: int8 blocks streamed, whole blocks re-run
INT8_STREAMED = dict(int8_base=True, blocks_to_swap=1, recompute="checkpoint", gradient_checkpointing=True)


@pytest.mark.parametrize("quantized", [dict(fp8_base=True), INT8_STREAMED], ids=["fp8", "int8_streamed"])
def test_a_quantized_base_loss_curve_follows_the_full_precision_one(quantized):
    (full, _), (curve, setup) = _losses_over_a_short_run(), _losses_over_a_short_run(**quantized)
    assert setup.quantized_layers > 0 and (setup.swapper is not None) == ("blocks_to_swap" in quantized)
    assert full[-1] < 0.95 * full[0] and curve[-1] < 0.95 * curve[0]  # both learn (about -9 %)
    for a, b in zip(full, curve):
        assert abs(a - b) / a < 0.01, (full, curve)


@pytest.mark.slow  # compiles
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_swapped_blocks_free_their_device_copy_after_the_forward(fp8, monkeypatch):
    """Compiled blocks that recompute nothing save tensors for backward; none of them may share a swapped
    block's device copy (as a compiled graph's saved copy of an fp8 scale once did), or the whole copy
    stays alive until that block's backward, where activations peak."""
    from torch.multiprocessing.reductions import StorageWeakRef

    from ltxv2_diffusers.speed.block_swap import _HostCopy

    copies = []
    fetch = _HostCopy.fetch

    def recording_fetch(self, *args, **kwargs):
        fetch(self, *args, **kwargs)
        copies.append(StorageWeakRef(self.device_copy.untyped_storage()))

    monkeypatch.setattr(_HostCopy, "fetch", recording_fetch)
    torch._dynamo.reset()
    model = tiny_lora_model(torch.float32, num_layers=4)
    model.enable_gradient_checkpointing()
    setup = apply_speed_options(model, SpeedOptions(naive=False, compute_dtype=torch.bfloat16, fp8_base=fp8,
                                                    quantize_min_features=16, blocks_to_swap=2, blocks_without_recompute=4,
                                                    compile_backend="aot_eager_decomp_partition"), device="cpu")
    assert setup.swapper.swapped == [0, 1] and not setup.swapper.rerun_in_backward
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), tiny_batch())
    assert len(copies) >= 2 and all(ref.expired() for ref in copies)  # fetched for the forward, then freed
    loss.backward()
    assert not all(ref.expired() for ref in copies[-2:])  # fetched again by backward, kept for the next forward
    torch._dynamo.reset()


@pytest.mark.parametrize("quantize", ["fp8", "int8"])
def test_applying_a_lora_to_quantized_base_weights_is_refused(quantize):
    """A quantized layer's `.weight` is a dequantized copy (fusing into it would change nothing) and PEFT
    cannot wrap it: the error says so, not that the LoRA was made for another model."""
    from ltxv2_diffusers.lora import apply_lora, lora_from_model
    from ltxv2_diffusers.models.presets import build_components

    source = tiny_lora_model(torch.float32, num_layers=2)
    lora = lora_from_model(source)
    target = build_components("tiny", components=("transformer",), overrides={"transformer": {"num_layers": 2}})["transformer"]
    target.requires_grad_(False)  # the base is frozen, as in training
    quantize_all = acceleration.fp8_base_weights if quantize == "fp8" else acceleration.quantize_base_weights
    assert quantize_all(target, min_features=16) > 0
    for fuse in (True, False):
        with pytest.raises(TypeError, match=r"cannot apply a LoRA to transformer_blocks\.0\..*stored as "
                                            r"(Fp8Linear|Int8WeightLinear).*before the base is quantized"):
            apply_lora(target, lora, fuse=fuse)


def test_a_model_too_small_to_quantize_says_so(caplog):
    model = tiny_lora_model(torch.float32, num_layers=2)  # 32 wide: below the 256 that quantization starts at
    with caplog.at_level("WARNING", logger="ltxv2_diffusers.training"):
        setup = apply_speed_options(model, SpeedOptions(naive=False, compute_dtype=torch.float32, compile=False,
                                                        fp8_base=True), device="cpu")
    assert setup.quantized_layers == 0 and "fp8 base weights and matmuls (0 layers)" in setup.summary()
    assert "--fp8_base: no frozen linear layer of the transformer blocks is at least 256 wide" in caplog.text


def test_the_fp8_parts_benchmark_times_every_fp8_layer_of_a_block(bench_script, tmp_path):
    """`benchmarks/fp8_matmul.py` on the tiny model (CPU smoke): the shapes it times are those of every fp8
    layer of one block, as a forward on the clip sees them, and each part gets a per-step total."""
    bench = bench_script("fp8_matmul")
    results = tmp_path / "r.jsonl"
    record = bench.main(["--preset", "tiny", "--device", "cpu", "--frames", "9", "--height", "64", "--width", "64",
                         "--text_len", "8", "--repeats", "1", "--warmup", "0", "--min_features", "16",
                         "--results", str(results)])
    assert record["fp8_layers_per_block"] > 0
    assert sum(s["layers"] for s in record["per_shape"]) == record["fp8_layers_per_block"]
    video_tokens = 2 * 2 * 2  # 9 frames at 64x64: 2 latent frames of 2x2
    assert {s["rows"] for s in record["per_shape"]} >= {video_tokens, 8}  # video tokens; text tokens (keys, values)
    assert all(ms > 0 for s in record["per_shape"] for ms in s["ms"].values())
    for how in fp8.SCALINGS:
        assert record["summary_ms"][f"fp8 matmuls ({how})"] == pytest.approx(
            record["step_ms"][f"fp8 forward ({how})"] + record["step_ms"][f"fp8 input grad ({how})"])
    assert results.read_text().startswith("RESULT ")


def test_the_step_benchmark_sets_the_fp8_scaling_asked_for(bench_script, monkeypatch):
    """`benchmarks/train_step.py --fp8_scaling` (CPU smoke) sets the fp8 module's scaling before the model is
    built and records it with the result. (The tiny model has no layer wide enough to quantize: the
    scalings themselves are checked on `Fp8Linear` above.)"""
    monkeypatch.setattr(fp8, "scaling", fp8.scaling)  # restored afterwards: the benchmark sets the module's
    bench = bench_script("train_step")
    res = bench.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--frames", "9",
                      "--height", "64", "--width", "64", "--text_len", "8", "--no_compile", "--fp8_base",
                      "--fp8_scaling", "tensorwise"])
    assert res["fp8_scaling"] == fp8.scaling == "tensorwise" and res["options"]["fp8_base"]
    assert torch.isfinite(torch.tensor(res["loss"]))
