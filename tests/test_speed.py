"""The speed/memory levers keep the training numerics: gradients of the fast path equal the plain
fp32 path within bf16 tolerance, int8 base weights stay within quantization error, the fp32 master
weights update like a plain fp32 optimizer, and the benchmark's CPU smoke mode runs."""

import contextlib
import json

import pytest
import torch

from conftest import adapter_loss, lora_grads, tiny_batch, tiny_lora_model


@pytest.fixture(scope="module", autouse=True)
def shared_compiles():
    """Compiled block graphs are shared by the tests of this module: a model of the same shape compiled
    with the same policy reuses the graphs an earlier test compiled (compiling is what takes time
    here). The cache is cleared before and after the module, and around a test that compiles the
    same code under another partitioner setting (`isolated_compiles`), which dynamo does not guard on."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@contextlib.contextmanager
def isolated_compiles():
    """Compile with an empty cache and leave none of the graphs behind."""
    torch._dynamo.reset()
    try:
        yield
    finally:
        torch._dynamo.reset()
from ltxv2_diffusers import speed as acceleration
from ltxv2_diffusers.models.adapter import LTXAVModelAdapter
from ltxv2_diffusers.speed.setup import SpeedOptions, apply_speed_options


def test_fast_path_gradients_match_fp32_within_bf16_tolerance():
    batch = tiny_batch()
    ref = tiny_lora_model(torch.float32)
    adapter_loss(LTXAVModelAdapter.from_components(ref), batch).backward()
    ref_grads = lora_grads(ref)

    fast = tiny_lora_model(torch.float32)
    setup = apply_speed_options(fast, SpeedOptions(naive=False, compile=False), device="cpu")
    assert setup.master is not None and all(p.dtype == torch.bfloat16 for p in fast.parameters())
    assert all(m.dtype == torch.float32 for m in setup.optimizer_params)
    adapter_loss(LTXAVModelAdapter.from_components(fast), batch).backward()
    setup.before_optimizer_step()
    names = [n for n, p in fast.named_parameters() if p.requires_grad]
    flat_grads = setup.master.flat.grad.split(setup.master.sizes)  # the fp32 gradients the optimizer steps with
    fast_grads = dict(zip(names, flat_grads))

    assert set(fast_grads) == set(ref_grads) and len(ref_grads) > 10
    flat_ref = torch.cat([ref_grads[n].flatten() for n in names])
    flat_fast = torch.cat([fast_grads[n].flatten() for n in names])
    assert flat_ref.abs().max() > 0
    cos = torch.nn.functional.cosine_similarity(flat_ref, flat_fast, dim=0)
    rel = (flat_fast - flat_ref).norm() / flat_ref.norm()
    assert cos > 0.999 and rel < 0.03, (float(cos), float(rel))


def test_master_weights_update_like_fp32_adamw():
    torch.manual_seed(0)
    p32 = torch.nn.Parameter(torch.randn(64, 8))
    p16 = torch.nn.Parameter(p32.detach().clone())
    master = acceleration.MasterWeights([p16], torch.bfloat16)
    opt_ref = torch.optim.AdamW([p32], lr=1e-2)
    opt = torch.optim.AdamW([master.flat], lr=1e-2)
    for i in range(3):
        grad = torch.randn(64, 8, generator=torch.Generator().manual_seed(i))
        p32.grad = grad.clone()
        p16.grad = grad.to(torch.bfloat16) / 2
        master.grads_to_master(accumulate=False)
        p16.grad = grad.to(torch.bfloat16) / 2
        master.grads_to_master(accumulate=True)  # two micro-batches, summed in fp32
        opt_ref.step()
        opt.step()
        master.master_to_model()
    assert p16.dtype == torch.bfloat16
    torch.testing.assert_close(master.master_params[0].data, p32.data, atol=5e-3, rtol=0)
    assert torch.equal(p16.data, master.master_params[0].data.to(torch.bfloat16))


def test_int8_base_weights_forward_and_input_gradient():
    torch.manual_seed(0)
    lin = torch.nn.Linear(512, 384).requires_grad_(False)
    q = acceleration.Int8WeightLinear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.numel() == lin.weight.numel()
    x = torch.randn(4, 512, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y_ref, y = lin(x), q(x2)
    assert (y - y_ref).norm() / y_ref.norm() < 1e-2
    y_ref.sum().backward()
    y.sum().backward()
    assert (x2.grad - x.grad).norm() / x.grad.norm() < 1e-2
    assert (q.weight - lin.weight).abs().max() <= q.scale.max() / 2 + 1e-6


def test_quantize_base_weights_leaves_lora_trainable_and_changes_little():
    batch = tiny_batch()
    model = tiny_lora_model(torch.float32)
    with torch.no_grad():
        before = adapter_loss(LTXAVModelAdapter.from_components(model), batch)
    lora_before = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    count = acceleration.quantize_base_weights(model, min_features=16)
    assert count > 0
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == lora_before
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), batch)
    assert abs(float(loss.detach()) - float(before)) / float(before) < 0.02
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def _counting(policy, decisions):
    def counted(ctx, op, *args, **kwargs):
        decision = policy(ctx, op, *args, **kwargs)
        decisions[decision.name] = decisions.get(decision.name, 0) + 1
        return decision

    return counted


@pytest.mark.slow  # compiles
@pytest.mark.parametrize("keep", ["attention_policy", "budget_0", "last_block_without_recompute",
                                  "last_block_without_recompute_keeping_all"])
def test_compiled_recompute_gives_the_checkpointed_gradients(keep):
    """The compiled blocks' own recomputation (the default fast path) changes what is stored for
    backward, never the gradients. `aot_eager_decomp_partition` runs the same partitioner as
    inductor without generating kernels, so this runs on a CPU in seconds."""
    batch = tiny_batch()
    ref = tiny_lora_model(torch.float32)
    ref.enable_gradient_checkpointing()
    adapter_loss(LTXAVModelAdapter.from_components(ref), batch).backward()
    ref_grads = lora_grads(ref)

    model = tiny_lora_model(torch.float32)
    decisions = {}
    if keep == "attention_policy":  # tiny attentions: keep every one so the policy is exercised
        policy = _counting(acceleration.keep_attention_policy(min_attention_pairs=1), decisions)
        acceleration.compile_blocks(model, recompute_policy=policy, backend="aot_eager_decomp_partition")
    elif keep.startswith("last_block_without_recompute"):  # what --blocks_without_recompute 1 compiles
        lean = not keep.endswith("keeping_all")
        model.enable_gradient_checkpointing()
        setup = apply_speed_options(model, SpeedOptions(naive=False, compute_dtype=torch.float32, blocks_without_recompute=1,
                                                        without_recompute_placement="last", lean_without_recompute=lean,
                                                        compile_backend="aot_eager_decomp_partition"), device="cpu")
        what = "only elementwise work" if lean else "nothing"
        assert f"the last 1 block recompute {what}" in setup.summary()
    isolated = keep == "budget_0"  # the partitioner's budget applies to the shared block code: compile alone
    with isolated_compiles() if isolated else contextlib.nullcontext():
        if isolated:
            acceleration.compile_blocks(model, activation_memory_budget=0.0, backend="aot_eager_decomp_partition")
        adapter_loss(LTXAVModelAdapter.from_components(model), batch).backward()
    grads = lora_grads(model)

    assert set(grads) == set(ref_grads) and len(grads) > 10
    for name in ref_grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-6, rtol=1e-5, msg=name)
    if keep == "attention_policy":
        assert decisions.get("MUST_SAVE", 0) >= 6 * 2  # six attentions per block, two blocks
        assert decisions.get("PREFER_RECOMPUTE", 0) > decisions["MUST_SAVE"]


def _bytes_kept_per_block(lean: bool) -> dict:
    """Bytes autograd keeps for backward per block in one forward of a 4-block tiny model whose blocks 1
    and 3 are exempt from recomputation (the compiled blocks' saved tensors pass through the
    saved-tensor hooks; None: outside the blocks)."""
    model = tiny_lora_model(torch.float32, num_layers=4)
    model.enable_gradient_checkpointing()
    apply_speed_options(model, SpeedOptions(naive=False, compute_dtype=torch.float32, blocks_without_recompute=2,
                                            lean_without_recompute=lean, compile_backend="aot_eager_decomp_partition"),
                        device="cpu")
    weights = {p.data_ptr() for p in model.parameters()}
    current, kept = [None], {}
    for i, block in enumerate(model.transformer_blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: current.__setitem__(0, i))
        block.register_forward_hook(lambda m, a, o: current.__setitem__(0, None))

    def pack(t):
        if t.data_ptr() not in weights:
            kept[current[0]] = kept.get(current[0], 0) + t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        adapter_loss(LTXAVModelAdapter.from_components(model), tiny_batch())
    return kept


@pytest.mark.slow  # compiles
def test_lean_blocks_without_recompute_keep_less_for_backward():
    """`keep_matmul_outputs_policy` recomputes norms, modulation and RoPE in backward instead of keeping
    both their inputs and outputs: an exempt tiny block keeps about a third less (at full size ~0.79
    instead of ~1.11 GiB). Blocks with different policies each run their own graph (dynamo does not
    guard on the policy: a shared wrapper once made recomputing blocks run the exempt blocks' graph).
    Same gradients: the parametrized test above."""
    lean, default = _bytes_kept_per_block(True), _bytes_kept_per_block(False)
    assert lean[0] == lean[2] == default[0] == default[2]  # recomputing blocks: inputs and attention outputs
    assert lean[1] == lean[3] and default[1] == default[3]
    assert lean[0] < lean[1] < 0.8 * default[1], (lean, default)


def test_recompute_options_choose_who_recomputes():
    fast = dict(naive=False, compute_dtype=torch.float32, compile_backend="aot_eager_decomp_partition")
    model = tiny_lora_model(torch.float32)
    model.enable_gradient_checkpointing()
    setup = apply_speed_options(model, SpeedOptions(**fast), device="cpu")
    assert not model.is_gradient_checkpointing  # the compiled blocks recompute themselves
    assert "compiled blocks, recompute: inside compiled blocks, keeping large self-attention" in setup.summary()

    model = tiny_lora_model(torch.float32)
    model.enable_gradient_checkpointing()
    setup = apply_speed_options(model, SpeedOptions(recompute="checkpoint", **fast), device="cpu")
    assert model.is_gradient_checkpointing and "recompute: whole blocks" in setup.summary()

    model = tiny_lora_model(torch.float32)
    model.enable_gradient_checkpointing()
    setup = apply_speed_options(model, SpeedOptions(activation_memory_budget=0.25, **fast), device="cpu")
    assert "activation memory budget 0.25" in setup.summary()

    eager = apply_speed_options(tiny_lora_model(torch.float32), SpeedOptions.for_device("cpu"), device="cpu")
    assert eager.summary() == "speed: float32 compute, eager, recompute: none"

    model = tiny_lora_model(torch.float32)
    with pytest.raises(ValueError, match="--blocks_without_recompute"):  # nothing to exempt without checkpointing
        apply_speed_options(model, SpeedOptions(blocks_without_recompute=1, **fast), device="cpu")
    model.enable_gradient_checkpointing()
    with pytest.raises(ValueError, match="between 1 and 2"):
        apply_speed_options(model, SpeedOptions(blocks_without_recompute=3, **fast), device="cpu")
    with pytest.raises(ValueError, match="--activation_memory_budget"):
        apply_speed_options(model, SpeedOptions(blocks_without_recompute=1, activation_memory_budget=0.5, **fast),
                            device="cpu")
    model = tiny_lora_model(torch.float32)
    with pytest.raises(ValueError, match="--activation_memory_budget"):  # nothing to recompute without checkpointing
        apply_speed_options(model, SpeedOptions(activation_memory_budget=0.1, **fast), device="cpu")
    with pytest.raises(ValueError, match="--recompute"):
        apply_speed_options(model, SpeedOptions(recompute="sometimes", **fast), device="cpu")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        acceleration.compile_blocks(model, activation_memory_budget=1.5)


def test_grads_to_master_accumulates_in_fp32():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    master = acceleration.MasterWeights(params, torch.bfloat16)
    steps = [[torch.randn(3, 4), torch.randn(5)] for _ in range(3)]
    for i, grads in enumerate(steps):
        for p, g in zip(params, grads):
            p.grad = g.to(torch.bfloat16)
        master.grads_to_master(accumulate=i > 0)
        assert all(p.grad is None for p in params)
    assert master.flat.grad.dtype == torch.float32
    grads = master.flat.grad.split(master.sizes)
    for k, p in enumerate(params):
        expect = sum(step[k].to(torch.bfloat16).float() for step in steps)
        torch.testing.assert_close(grads[k].view(p.shape), expect)


def test_master_weights_are_one_flat_buffer_each():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5)),
              torch.nn.Parameter(torch.randn(2, 2), requires_grad=False)]
    values = [p.detach().clone() for p in params[:2]]
    master = acceleration.MasterWeights(params, torch.bfloat16)
    assert master.flat.shape == (17,) and master.flat.dtype == torch.float32
    for p, v in zip(params[:2], values):  # views of one bf16 buffer, same values
        assert p.dtype == torch.bfloat16 and p.untyped_storage().data_ptr() == master.flat_model.data_ptr()
        torch.testing.assert_close(p.float(), v.to(torch.bfloat16).float())
    params[0].grad = torch.ones(3, 4, dtype=torch.bfloat16)  # the second parameter got no gradient
    master.grads_to_master()
    assert master.flat.grad.tolist() == [1.0] * 12 + [0.0] * 5
    with torch.no_grad():
        master.flat.add_(1.0)
    master.master_to_model()
    torch.testing.assert_close(params[1].float(), (values[1] + 1).to(torch.bfloat16).float())


def test_per_parameter_optimizer_state_is_flattened_for_the_flat_master():
    """Checkpoints written before the masters were flat still resume."""
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    old = torch.optim.AdamW([p.detach().clone().requires_grad_() for p in params], lr=1e-3)
    for p in old.param_groups[0]["params"]:
        p.grad = torch.randn(p.shape)
    old.step()
    master = acceleration.MasterWeights(params, torch.bfloat16)
    new = torch.optim.AdamW([master.flat], lr=1e-3)
    new.load_state_dict(master.optimizer_state_from_per_parameter(old.state_dict()))
    state = new.state[master.flat]
    expect = torch.cat([old.state[p]["exp_avg_sq"].reshape(-1) for p in old.param_groups[0]["params"]])
    torch.testing.assert_close(state["exp_avg_sq"], expect)
    assert float(state["step"]) == 1.0
    assert master.optimizer_state_from_per_parameter(new.state_dict())["state"][0]["exp_avg"].shape == (17,)
    blockwise = old.state_dict()
    for i in blockwise["param_groups"][0]["params"]:  # a quantized optimizer's per-block scales
        blockwise["state"][i]["absmax1"] = torch.ones(1)
    with pytest.raises(ValueError, match="'absmax1'.* cannot be merged into one flat fp32 master"):
        master.optimizer_state_from_per_parameter(blockwise)


# The swapper's logic runs on a CPU too (synchronous copies), so CI covers it; on a GPU the same tests
# exercise the side-stream copies and events.
SWAP_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _backend(device):
    return "inductor" if device == "cuda" else "aot_eager_decomp_partition"


@pytest.mark.parametrize("device", SWAP_DEVICES)
def test_block_swap_with_rerun_matches_resident_model(device):
    batch = {k: v.to(device) for k, v in tiny_batch().items()}
    ref = tiny_lora_model(torch.float32).to(device)
    ref.enable_gradient_checkpointing()
    expect = adapter_loss(LTXAVModelAdapter.from_components(ref), batch)
    swapper = acceleration.BlockSwapper(ref, 1, device=device)
    assert swapper.rerun_in_backward and swapper.swapped == [1]
    got = adapter_loss(LTXAVModelAdapter.from_components(ref), batch)
    torch.testing.assert_close(got, expect)
    swapper.reset()
    acceleration.compile_blocks(ref, backend=_backend(device))  # hooks must stay outside the compiled code
    for _ in range(2):
        got = adapter_loss(LTXAVModelAdapter.from_components(ref), batch)
        got.backward()
        swapper.reset()
        torch.testing.assert_close(got, expect, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("device", SWAP_DEVICES)
@pytest.mark.parametrize("checkpointing", [True, False], ids=["compiled-recompute", "no-recompute"])
def test_block_swap_without_rerun_matches_resident_model(device, checkpointing):
    """Swapped blocks whose backward is not a re-run forward (compiled recompute, or none) are fetched by
    a gradient hook; their LoRA gradients equal the resident model's over two steps."""
    batch = {k: v.to(device) for k, v in tiny_batch().items()}
    results = {}
    for swap in (0, 2, 4):  # 4: all but the last, the first block included
        model = tiny_lora_model(torch.float32, num_layers=5).to(device)
        if checkpointing:
            model.enable_gradient_checkpointing()
        options = SpeedOptions(blocks_to_swap=swap, blocks_without_recompute=2 if checkpointing else 0,
                               compute_dtype=torch.float32, compile_backend=_backend(device))
        setup = apply_speed_options(model, options, device=device)
        assert (setup.swapper is not None) == bool(swap)
        if swap:
            assert not setup.swapper.rerun_in_backward
            assert setup.swapper.swapped == ([0, 2] if swap == 2 else [0, 1, 2, 3])
            assert f"{swap} blocks swapped to CPU (spread, fetched back before their backward)" in setup.summary()
            # blocks that recompute nothing leave their text keys' and values' weights to the forward
            plain = {1, 3} if checkpointing else set(range(5))
            assert sorted(setup.swapper.forward_stores) == sorted(plain & set(setup.swapper.swapped))
        runs = []
        for _ in range(2):
            loss = adapter_loss(LTXAVModelAdapter.from_components(model), batch)
            loss.backward()
            runs.append((loss.detach(), lora_grads(model)))
            model.zero_grad(set_to_none=True)
            setup.reset()
        results[swap] = runs
    for (loss0, grads0), (loss1, grads1) in [pair for swap in (2, 4) for pair in zip(results[0], results[swap])]:
        torch.testing.assert_close(loss1, loss0, atol=1e-5, rtol=1e-5)
        assert grads0.keys() == grads1.keys() and grads0
        for name in grads0:
            torch.testing.assert_close(grads1[name], grads0[name], atol=1e-5, rtol=1e-4, msg=name)


def test_block_swap_keeps_weights_off_the_device_between_forward_and_backward():
    """Gradient-hook mode: swapped blocks are gone after their forward (where activations peak), back
    after backward with their exact values, released again by a no-grad forward, and gradient
    accumulation over two micro-batches sums what two separate backward passes give."""
    batch = tiny_batch()
    ref = tiny_lora_model(torch.float32, num_layers=5)
    frozen = {n: p.detach().clone() for n, p in ref.named_parameters() if not p.requires_grad}
    model = tiny_lora_model(torch.float32, num_layers=5)
    swapper = acceleration.BlockSwapper(model, 2, device="cpu", rerun_in_backward=False)
    swapped = [model.transformer_blocks[i] for i in swapper.swapped]

    def sizes():  # vectors (biases, norms) stay on the device
        return [sum(p.numel() for p in b.parameters() if not p.requires_grad and p.dim() > 1) for b in swapped]

    assert sizes() == [0, 0]  # offloaded at set-up
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), batch)
    assert sizes() == [0, 0] and not swapper.resident  # each dropped right after its forward
    loss.backward()
    assert all(n > 0 for n in sizes()) and swapper.resident == set(swapper.swapped)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            torch.testing.assert_close(p.detach(), frozen[name], rtol=0, atol=0, msg=name)
    first = lora_grads(model)
    adapter_loss(LTXAVModelAdapter.from_components(model), batch).backward()  # accumulate, no reset in between
    adapter_loss(LTXAVModelAdapter.from_components(ref), batch).backward()
    expect = lora_grads(ref)
    for name, g in lora_grads(model).items():
        torch.testing.assert_close(g, 2 * first[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(first[name], expect[name], rtol=1e-5, atol=1e-6, msg=name)
    swapper.reset()
    assert swapper.resident == set(swapper.swapped)  # kept for the next forward
    with torch.no_grad():
        got = adapter_loss(LTXAVModelAdapter.from_components(model), batch)
        want = adapter_loss(LTXAVModelAdapter.from_components(ref), batch)
    torch.testing.assert_close(got, want)
    assert sizes() == [0, 0] and not swapper.resident
    swapper.remove()  # back for good: forwards no longer drop anything
    with torch.no_grad():
        torch.testing.assert_close(adapter_loss(LTXAVModelAdapter.from_components(model), batch), want)
    assert all(n > 0 for n in sizes())


@pytest.mark.parametrize("device", SWAP_DEVICES)
@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "compiled"])
def test_text_keys_and_values_are_fetched_by_the_forward_only(device, compiled):
    """Swapped blocks that recompute nothing leave the text cross-attentions' key and value weights out
    of backward (the text carries no gradient; the next forward fetches them), with the same loss and
    gradients as the resident model over two steps. Where the text does carry gradient, backward
    fetches them too, and the text's gradient is right."""
    batch = {k: v.to(device) for k, v in tiny_batch().items()}
    ref = tiny_lora_model(torch.float32, num_layers=5).to(device)
    model = tiny_lora_model(torch.float32, num_layers=5).to(device)
    if compiled:
        for m in (ref, model):
            acceleration.compile_blocks(m, backend=_backend(device))  # no checkpointing: nothing recomputes
    swapper = acceleration.BlockSwapper(model, 2, device=device, rerun_in_backward=False,
                                        forward_only=acceleration.LTX2_TEXT_KEYS_VALUES, forward_only_blocks={2, 3})
    assert swapper.swapped == [0, 2] and sorted(swapper.forward_stores) == [2]  # swapped and plain
    block = model.transformer_blocks[2]
    split = [n for n, t in block.named_parameters() if not t.requires_grad and n.endswith(".weight") and  # biases stay
             acceleration.LTX2_TEXT_KEYS_VALUES.selects(n)]
    assert {n.split(".base_layer")[0] for n in split} == {"attn2.to_k", "attn2.to_v", "audio_attn2.to_k",
                                                          "audio_attn2.to_v"}

    def on_device(names):
        params = dict(block.named_parameters())
        return {params[n].numel() > 0 for n in names}

    for _ in range(2):
        loss = adapter_loss(LTXAVModelAdapter.from_components(model), batch)
        assert on_device(split) == {False}
        loss.backward()
        assert swapper.resident == {0, 2} and not swapper.forward_resident  # backward fetched the rest only
        assert on_device(split) == {False} and on_device([n for n, _ in block.named_parameters()
                                                          if n not in split and "lora" not in n]) == {True}
        expect = adapter_loss(LTXAVModelAdapter.from_components(ref), batch)
        expect.backward()
        torch.testing.assert_close(loss, expect, atol=1e-5, rtol=1e-5)
        want, got = lora_grads(ref), lora_grads(model)
        assert want.keys() == got.keys() and want
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
        for m in (ref, model):
            m.zero_grad(set_to_none=True)
        swapper.reset()
    # The text carries gradient (say a plugin trains what produces it): backward needs those weights.
    texts = [batch["text"].clone().requires_grad_() for _ in range(2)]
    adapter_loss(LTXAVModelAdapter.from_components(model), {**batch, "text": texts[0]}).backward()
    assert swapper.forward_resident == {2}
    adapter_loss(LTXAVModelAdapter.from_components(ref), {**batch, "text": texts[1]}).backward()
    torch.testing.assert_close(texts[0].grad, texts[1].grad, atol=1e-5, rtol=1e-4)
    swapper.remove()
    assert on_device(split) == {True}


def test_blocks_without_recompute_are_spread_or_last():
    from ltxv2_diffusers.speed.setup import blocks_without_recompute

    model = tiny_lora_model(torch.float32, num_layers=6)
    assert blocks_without_recompute(model, SpeedOptions()) == set()
    assert blocks_without_recompute(model, SpeedOptions(blocks_without_recompute=3)) == {1, 3, 5}  # spread
    assert blocks_without_recompute(model, SpeedOptions(blocks_without_recompute=2,
                                                        without_recompute_placement="last")) == {4, 5}
    assert acceleration.evenly_spaced(48, 26)[:4] == [0, 2, 4, 6] and len(acceleration.evenly_spaced(48, 26)) == 26


def test_block_swap_keeps_the_compute_dtype_of_the_fast_path():
    """The frozen base is cast to the compute dtype before blocks are swapped out, so the copies that
    come back are bf16 like the rest (an fp32 checkpoint must not return fp32 blocks)."""
    model = tiny_lora_model(torch.float32, num_layers=5)
    model.enable_gradient_checkpointing()
    options = SpeedOptions(blocks_to_swap=2, compute_dtype=torch.bfloat16, compile=False, recompute="checkpoint")
    setup = apply_speed_options(model, options, device="cpu")
    assert setup.swapper.rerun_in_backward and "(re-fetched by the backward re-run)" in setup.summary()
    loss = adapter_loss(LTXAVModelAdapter.from_components(model), tiny_batch())
    loss.backward()
    setup.before_optimizer_step()
    for i in setup.swapper.swapped:
        setup.swapper._ensure(i)
    dtypes = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    assert dtypes == {torch.bfloat16} and torch.isfinite(loss)
    assert setup.master.flat.grad is not None and setup.master.flat.grad.dtype == torch.float32


def test_streaming_set_up_leaves_the_blocks_where_they_are():
    """With swapping, the speed setup moves everything but the blocks (the swapper moves or streams those),
    keeping parameter identities; without, everything. A dtype change stands in for the move to the GPU
    (`Tensor.to` and `Module.to` take either)."""
    from ltxv2_diffusers.speed.setup import _place_outside_blocks

    model = tiny_lora_model(torch.float32)
    before = {n: p for n, p in model.named_parameters()}
    _place_outside_blocks(model, model, SpeedOptions(blocks_to_swap=1), torch.float64, move_blocks=False)
    for name, p in model.named_parameters():
        assert p is before[name]
        assert p.dtype == (torch.float32 if name.startswith("transformer_blocks.") else torch.float64), name
    assert any(not n.startswith("transformer_blocks.") for n in before)
    _place_outside_blocks(model, model, SpeedOptions(), torch.float64, move_blocks=True)
    assert {p.dtype for p in model.parameters()} == {torch.float64}


@pytest.mark.parametrize("swap", [0, 2])
def test_a_quantized_base_is_quantized_block_by_block_and_streamed_as_it_goes(swap):
    """int8 base weights: each block is moved to the device, quantized there and (when streamed) copied to
    host memory before the next one is quantized, so the whole quantized model is never held at once outside
    host memory; the result trains exactly as the model quantized in one go."""
    from ltxv2_diffusers.speed.quant.int8 import Int8WeightLinear

    batch = tiny_batch()
    whole = tiny_lora_model(torch.float32, num_layers=3)
    acceleration.quantize_base_weights(whole, min_features=16)
    adapter_loss(LTXAVModelAdapter.from_components(whole), batch).backward()
    reference = lora_grads(whole)

    model = tiny_lora_model(torch.float32, num_layers=3)
    blocks = list(model.transformer_blocks)
    held = []  # per quantized block: how many blocks then held int8 weights outside host memory

    def int8_outside_host():
        return sum(any(isinstance(m, Int8WeightLinear) and m.qweight.numel() for m in b.modules()) for b in blocks)

    original = acceleration.quantize_base_weights

    def spying(*args, **kwargs):
        count = original(*args, **kwargs)
        held.append(int8_outside_host())
        return count

    import ltxv2_diffusers.speed.setup as setup_module
    setup_module.quantize_base_weights, saved = spying, setup_module.quantize_base_weights
    try:
        options = SpeedOptions(compile=False, recompute="checkpoint", compute_dtype=torch.float32, int8_base=True,
                               quantize_min_features=16, blocks_to_swap=swap, gradient_checkpointing=True)
        setup = apply_speed_options(model, options, device="cpu")
    finally:
        setup_module.quantize_base_weights = saved
    assert setup.quantized_layers > 0 and len(held) == 3
    if swap:  # the streamed blocks (the last two) come first, each in host memory before the next is quantized
        assert setup.swapper.swapped == [1, 2] and held == [1, 1, 1]
    else:
        assert held == [1, 2, 3]
    adapter_loss(LTXAVModelAdapter.from_components(model), batch).backward()
    grads = lora_grads(model)
    assert grads.keys() == reference.keys()
    for name, g in reference.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_speed_setup_sets_checkpointing_and_trains_the_lora_in_fp32_on_the_eager_path():
    """`gradient_checkpointing` in the options is what the transformer gets (None: as it is); the eager path
    trains fp32 LoRA weights whatever dtype they were made in."""
    model = tiny_lora_model(torch.bfloat16)
    assert not model.is_gradient_checkpointing
    setup = apply_speed_options(model, SpeedOptions.for_device("cpu", gradient_checkpointing=True), device="cpu")
    assert model.is_gradient_checkpointing and setup.recompute == "whole blocks (torch.utils.checkpoint)"
    assert {p.dtype for p in setup.trainable_params} == {torch.float32}
    apply_speed_options(model, SpeedOptions.for_device("cpu"), device="cpu")
    assert model.is_gradient_checkpointing  # None: left as it was
    apply_speed_options(model, SpeedOptions.for_device("cpu", gradient_checkpointing=False), device="cpu")
    assert not model.is_gradient_checkpointing


def test_block_swap_refuses_more_than_the_host_memory():
    with pytest.raises(ValueError, match=r"--blocks_to_swap 40 keeps 29.8 GiB .* only 16.0 GiB is available"):
        acceleration.check_host_memory(int(29.8 * 2**30), "--blocks_to_swap 40", available=16 * 2**30, processes=1)
    acceleration.check_host_memory(2**30, "--blocks_to_swap 1", available=16 * 2**30, processes=1)
    with pytest.raises(ValueError, match=r"keeps 16.0 GiB .* \(8 processes on this host, 2.0 GiB each\)"):
        acceleration.check_host_memory(2 * 2**30, "--blocks_to_swap 2", available=16 * 2**30, processes=8)
    assert (acceleration.available_host_memory() or 1) > 0


def test_spread_blocks_keeps_the_last_two_resident_unless_all_but_one_are_asked_for():
    assert acceleration.spread_blocks(5, 2) == [0, 2]
    assert acceleration.spread_blocks(48, 46) == list(range(46))
    assert acceleration.spread_blocks(48, 47) == list(range(47))
    assert acceleration.spread_blocks(2, 1) == [0]
    assert acceleration.spread_blocks(48, 45, resident_tail=3) == list(range(45))
    assert acceleration.spread_blocks(6, 2, resident_tail=1) == [1, 3]  # over blocks 0..4
    with pytest.raises(ValueError, match="resident_tail must be >= 1"):
        acceleration.spread_blocks(6, 2, resident_tail=0)
    for n, k in ((48, 1), (48, 20), (48, 45), (5, 2), (5, 3)):
        got = acceleration.spread_blocks(n, k)
        assert len(got) == k and got == sorted(set(got)) and got[0] >= 0 and got[-1] <= n - 3
    with pytest.raises(ValueError, match="between 1 and 47"):
        acceleration.spread_blocks(48, 48)


def test_benchmark_smoke_on_cpu(tmp_path, bench_script):
    bench = bench_script("train_step")
    results = tmp_path / "results.jsonl"
    res = bench.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--frames", "9",
                      "--height", "64", "--width", "64", "--text_len", "8", "--results", str(results)])
    kind, _, line = results.read_text().partition(" ")
    assert kind == "RESULT" and json.loads(line)["s_per_step"] == res["s_per_step"]
    assert res["s_per_step"] > 0 and res["video_tokens"] == 2 * 2 * 2 and res["lora_params_m"] > 0
    assert torch.isfinite(torch.tensor(res["loss"])) and res["s_per_step_pipelined"] > 0
    assert res["s_per_step_pipelined_median"] > 0 and len(res["pipelined_times"]) >= 1
    assert list(res["phases"]) == ["forward+loss", "backward", "grads_to_master", "optimizer", "master_to_model"]
    assert all(p["host_ms"] >= 0 for p in res["phases"].values())
    # several variants in one process, the second one swapping blocks (re-run mode on a CPU)
    res = bench.main(["--preset", "tiny", "--device", "cpu", "--steps", "1", "--warmup", "1", "--frames", "9",
                      "--height", "64", "--width", "64", "--text_len", "8", "--num_layers", "5",
                      "--recompute", "ckpt,ckpt@2/0"])
    assert res["recompute"] == "ckpt@2/0" and res["options"]["blocks_to_swap"] == 2
    assert torch.isfinite(torch.tensor(res["loss"]))
    # extras may come before or after the swap counts
    assert bench.parse_variant("keep+cpp@44/28/2/spread") == ("keep", ["cpp"], [44, 28, 2], "spread")
    assert bench.parse_variant("keep@44/28/2/spread+cpp") == ("keep", ["cpp"], [44, 28, 2], "spread")
    assert bench.parse_variant("0.05+cg") == ("0.05", ["cg"], None, None)
    assert bench.parse_variant("keep@40/26") == ("keep", [], [40, 26, None], None)
    assert bench.parse_variant("keep@45/33/2/spread+tail3") == ("keep", ["tail3"], [45, 33, 2], "spread")
    assert bench.parse_variant("keep@46/33/2/spread+keepall") == ("keep", ["keepall"], [46, 33, 2], "spread")
    with pytest.raises(ValueError, match="after '@' give S/K"):
        bench.parse_variant("keep@40")
    with pytest.raises(ValueError, match="unknown extras"):
        bench.parse_variant("keep+fast@40/26")


def test_the_step_benchmark_counts_flops_once_per_model_and_clip(tmp_path, bench_script):
    """`--flops_cache`: a device call's runs on the same model and clip count the forward's FLOPs once."""
    bench = bench_script("train_step")
    cache = tmp_path / "flops.json"
    counted = []

    def count(value):
        return lambda: counted.append(value) or value

    a = bench.parse(["--flops_cache", str(cache)])
    assert bench.cached_flops(a, count(2.0e14)) == 2.0e14
    assert bench.cached_flops(a, count(9.0)) == 2.0e14 and counted == [2.0e14]  # read back, not counted
    longer = bench.parse(["--flops_cache", str(cache), "--frames", "241", "--height", "704", "--width", "1280"])
    assert bench.cached_flops(longer, count(1.3e15)) == 1.3e15 and counted == [2.0e14, 1.3e15]
    assert sorted(json.loads(cache.read_text()).values()) == [2.0e14, 1.3e15]
    assert bench.cached_flops(bench.parse([]), count(5.0)) == 5.0  # no cache: always counted
    assert not list(tmp_path.glob("*.tmp"))


def test_benchmark_block_points_follow_forward_then_backward(bench_script):
    """`--memory_trace` and `--lead_trace` note each block where its forward starts and where its
    output's gradient arrives: forward in block order, then backward in reverse."""
    bench = bench_script("train_step")
    model = tiny_lora_model(torch.float32, num_layers=3)
    adapter = LTXAVModelAdapter.from_components(model)
    points = []
    bench.block_points(list(model.transformer_blocks), lambda i: adapter_loss(adapter, tiny_batch()).backward(), lambda: None,
                       lambda kind, i: points.append((kind, i)))
    assert points == [("f", 0), ("f", 1), ("f", 2), ("b", 2), ("b", 1), ("b", 0)]
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.transformer_blocks)


def test_lora_layouts_benchmark_compares_layouts_of_the_same_function(bench_script):
    """The layouts `benchmarks/lora_layouts.py` times give the same outputs and gradients (fp32, CPU)."""
    fns = bench_script("lora_layouts").layouts
    g = torch.Generator().manual_seed(0)
    c, r, n = 16, 4, 3
    weights = [torch.randn(c, c, generator=g) for _ in range(n)]
    biases = [torch.randn(c, generator=g) for _ in range(n)]
    downs = [torch.randn(r, c, generator=g).requires_grad_() for _ in range(n)]
    ups = [torch.randn(c, r, generator=g).requires_grad_() for _ in range(n)]
    x = torch.randn(1, 5, c, generator=g, requires_grad=True)
    grads = [torch.randn(1, 5, c, generator=g) for _ in range(n)]
    results = {}
    for name, fn in fns(weights, biases, downs, ups, r).items():
        outs = fn(x)
        torch.autograd.backward(outs, grads)
        results[name] = [o.detach() for o in outs] + [t.grad for t in [x] + downs + ups]
        for t in [x] + downs + ups:
            t.grad = None
    for name in ("shared_A", "shared_A_addmm"):
        assert len(results[name]) == 3 * n + 1 and all(t is not None for t in results[name])
        for got, want in zip(results[name], results["peft_like"]):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(results["base"][0], results["peft_like"][0])  # the LoRA does add something


def test_grad_gather_benchmark_smoke_on_cpu(bench_script):
    bench = bench_script("grad_gather")
    res = bench.main(["--runs", "3", "--per_run", "5", "--repeats", "2"])
    assert res["same_values"] and res["tensors"] == 15 and res["flat_cat_ms"] > 0 and res["reshape_cat_ms"] > 0


def test_memory_peak_breakdown_replays_an_allocator_trace(bench_script):
    """`benchmarks/memory_peak.py` on a trace in the CUDA allocator's format: the peak counts what was
    allocated before the trace, less what the trace freed of it, and groups live blocks by their code."""
    mp = bench_script("memory_peak")
    swap = [{"filename": "/x/site-packages/ltxv2_diffusers/speed/block_swap.py", "name": "fetch",
             "line": 120}]
    graph = [{"filename": "/usr/lib/python3/site-packages/torch/_inductor/output_code.py", "name": "__call__", "line": 1},
             {"filename": "/tmp/torchinductor_u/ab/cabcdefghijk.py", "name": "call", "line": 99}]
    gib = 2**30
    trace = [
        {"action": "free_requested", "addr": 1, "size": 2 * gib},  # allocated before the trace
        {"action": "free_completed", "addr": 1, "size": 2 * gib},
        {"action": "alloc", "addr": 10, "size": 3 * gib, "frames": graph},
        {"action": "alloc", "addr": 11, "size": 1 * gib, "frames": swap},
        {"action": "alloc", "addr": 12, "size": 1 * gib, "frames": graph},  # the peak: 10 - 2 + 5 = 13 GiB
        {"action": "free_completed", "addr": 10, "size": 3 * gib},
        {"action": "alloc", "addr": 13, "size": 2 * gib, "frames": []},
    ]
    got = mp.peak_breakdown(trace, before=10 * gib)
    assert got["peak_gib"] == 13.0 and got["event"] == 4
    assert got["sites"] == [["allocated before the step", 8.0, 0], ["compiled graph cabcdefghi:call", 4.0, 2],
                            ["speed/block_swap.py:fetch:120", 1.0, 1]]


def test_block_counts_are_checked_against_the_models_depth():
    """What the trainer checks from the model's config before a 19B load."""
    from ltxv2_diffusers.speed.setup import check_options

    with pytest.raises(ValueError, match=r"--blocks_to_swap must be between 1 and 47 for this 48-block model \(got 48\)"):
        check_options(SpeedOptions(blocks_to_swap=48), 48, checkpointing=True)  # fetched by gradient hooks
    assert check_options(SpeedOptions(blocks_to_swap=47, blocks_without_recompute=28), 48, checkpointing=True)
    assert not check_options(SpeedOptions(blocks_to_swap=47, recompute="checkpoint"), 48, checkpointing=True)
    with pytest.raises(ValueError, match="this 1-block model has no block to swap; drop the flag"):
        acceleration.check_swap_count(1, 1)
    with pytest.raises(ValueError, match="between 1 and 47"):  # whole-block re-runs: all but the first
        check_options(SpeedOptions(blocks_to_swap=48, recompute="checkpoint"), 48, checkpointing=True)
    with pytest.raises(ValueError, match="--blocks_without_recompute must be between 1 and 48"):
        check_options(SpeedOptions(blocks_without_recompute=49), 48, checkpointing=True)


def test_speed_setup_refuses_a_transformer_without_a_lora():
    from ltxv2_diffusers.models.presets import build_components

    bare = build_components("tiny", components=("transformer",))["transformer"].requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter: add the LoRA"):
        apply_speed_options(bare, SpeedOptions.for_device("cpu"), device="cpu")
