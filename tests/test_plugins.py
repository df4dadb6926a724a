"""The plugin manager: built-ins, overriding, validation, error wrapping, blocking, listing."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pytest
import torch

from conftest import make_plugin
from ltxv2_diffusers import plugins
from ltxv2_diffusers.hookspecs import hookimpl
from ltxv2_diffusers.plugins import PluginError, PluginPolicy

BUILTINS = {"default.weighting", "default.sigmas", "default.audio_loss", "default.text_backends"}


def loaded_names() -> set[str]:
    return {r.name for r in plugins.plugin_infos() if r.status == "loaded"}


def test_import_is_side_effect_free_and_loading_is_lazy():
    code = (
        "import sys\n"
        "import ltxv2_diffusers.plugins as p\n"
        "assert not p._loaded, 'plugins loaded at import'\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
        "backends = p.text_encoder_backends()\n"
        "assert p._loaded and set(backends) >= {'gemma', 't5'}\n"
        "assert 'ltxv2_diffusers.text.gemma' not in sys.modules, 'backend imported at registration'\n"
        "assert p.pm is p.get_plugin_manager()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": ""})


def test_builtins_are_registered_first_and_trylast(pm):
    assert BUILTINS <= loaded_names()
    for name in BUILTINS:
        for caller in pm.get_hookcallers(pm.get_plugin(name)):
            impl = next(i for i in caller.get_hookimpls() if i.plugin_name == name)
            assert impl.trylast, f"{name}.{caller.name} must be trylast so installed plugins override it"


def test_builtin_weighting_formulas(pm):
    schemes = plugins.weighting_schemes()
    assert {"none", "sigma_sqrt", "cosmap", "logit_normal", "min_snr"} <= set(schemes)
    values = [0.1, 0.5, 0.9]
    sigmas = torch.tensor(values)

    def logit_normal_pdf(s):
        logit = math.log(s / (1 - s))
        return math.exp(-logit**2 / 2) / (math.sqrt(2 * math.pi) * s * (1 - s))

    def min_snr(s, gamma=5.0):
        snr = ((1 - s) / s) ** 2
        return min(snr, gamma) / snr

    expected = {
        "none": [1.0] * 3,
        "sigma_sqrt": [s**-2 for s in values],
        "cosmap": [2 / (math.pi * (1 - 2 * s + 2 * s**2)) for s in values],
        "logit_normal": [logit_normal_pdf(s) for s in values],
        "min_snr": [min_snr(s) for s in values],
    }
    for name, want in expected.items():
        got = schemes[name](sigmas, "video")
        assert got.shape == sigmas.shape and got.dtype == torch.float32
        torch.testing.assert_close(got, torch.tensor(want), rtol=1e-5, atol=0, msg=name)
    # min_snr keeps weight 1 above σ* = 1/(1+√γ) ≈ 0.309, is 0 for clean input, 1 for pure noise
    torch.testing.assert_close(schemes["min_snr"](torch.tensor([0.0, 0.32, 1.0]), "audio"), torch.tensor([0.0, 1.0, 1.0]))
    # per-token sigmas keep their shape; every scheme stays finite at the ends
    per_token = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.75, 0.999]])
    for name, fn in schemes.items():
        w = fn(per_token, "video")
        assert w.shape == per_token.shape and torch.isfinite(w).all(), name
    # logit_normal averages to 1 over uniform sigmas (it is a density on (0, 1))
    grid = (torch.arange(20000) + 0.5) / 20000
    assert abs(float(schemes["logit_normal"](grid, "video").mean()) - 1.0) < 1e-3


def test_installed_scheme_replaces_builtin_and_two_installed_clash(pm):
    def doubled(sigmas, modality):
        return 2 * torch.ones_like(sigmas)

    plugins.register_plugin(make_plugin("a", ltxv2_register_weighting_schemes=hookimpl(
        lambda register: register("cosmap", doubled))), name="plugin_a")
    scheme = plugins.weighting_schemes()["cosmap"]
    assert scheme.__wrapped__ is doubled and scheme.plugin == "plugin_a"
    torch.testing.assert_close(scheme(torch.rand(3), "video"), torch.full((3,), 2.0))
    plugins.register_plugin(make_plugin("b", ltxv2_register_weighting_schemes=hookimpl(
        lambda register: register("cosmap", doubled))), name="plugin_b")
    with pytest.raises(PluginError, match="'cosmap' is registered by both") as info:
        plugins.weighting_schemes()
    assert info.value.plugin in {"plugin_a", "plugin_b"}
    assert "'plugin_a'" in str(info.value) and "'plugin_b'" in str(info.value)


def test_first_result_hooks_fall_through_to_builtins(pm):
    pred, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    call = dict(pred=pred, target=target, mask=mask, sigmas=torch.rand(2), batch={}, args=argparse.Namespace())
    valid = [(pred[b, n] - target[b, n]).pow(2) for b in range(2) for n in range(5) if mask[b, n]]
    masked_mse = torch.cat(valid).mean()
    torch.testing.assert_close(plugins.audio_loss(**call), masked_mse)

    seen = []

    @hookimpl
    def ltxv2_audio_loss(pred, mask, sigmas):  # a subset of the arguments, in another order
        seen.append(sigmas)
        return None if bool((sigmas > 2).all()) else torch.tensor(7.0)

    plugins.register_plugin(make_plugin("l1", ltxv2_audio_loss=ltxv2_audio_loss), name="l1")
    assert float(plugins.audio_loss(**call)) == 7.0
    call["sigmas"] = torch.full((2,), 3.0)  # this plugin answers None: the built-in decides
    torch.testing.assert_close(plugins.audio_loss(**call), masked_mse)
    assert len(seen) == 2


def test_builtin_sigmas_come_from_the_scheduler(pm):
    from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

    args = argparse.Namespace()
    got = plugins.sample_sigmas(6, 2048, "video", args, torch.Generator().manual_seed(3))
    want = LTXV2FlowMatchScheduler().sample_sigmas(6, 2048, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)
    uniform = plugins.sample_sigmas(4, 2048, "audio", argparse.Namespace(sigma_sampling="uniform"),
                                    torch.Generator().manual_seed(1))
    torch.testing.assert_close(uniform, torch.rand(4, generator=torch.Generator().manual_seed(1)))


def test_text_backends_are_lazy_factories_of_the_real_classes(pm):
    from ltxv2_diffusers.text.gemma import GemmaTextBackend
    from ltxv2_diffusers.text.t5 import T5TextBackend

    backends = plugins.text_encoder_backends()
    assert backends["gemma"].load() is GemmaTextBackend and backends["t5"].load() is T5TextBackend


def test_unknown_hook_name_fails_at_registration(pm):
    @hookimpl
    def ltxv2_extra_loss(outputs):
        return []

    with pytest.raises(PluginError, match="unknown hook 'ltxv2_extra_loss'; did you mean ltxv2_extra_losses") as info:
        plugins.register_plugin(make_plugin("typo", ltxv2_extra_loss=ltxv2_extra_loss), name="typo")
    assert info.value.plugin == "typo" and pm.get_plugin("typo") is None
    pm.check_pending()  # the failed plugin left nothing behind


def test_unknown_argument_and_missing_marker_fail(pm):
    @hookimpl
    def ltxv2_on_save(path, epoch):
        pass

    with pytest.raises(PluginError, match=r"'bad_args' in hook ltxv2_on_save: argument\(s\) \['epoch'\] .* \(path, step\)"):
        plugins.register_plugin(make_plugin("bad_args", ltxv2_on_save=ltxv2_on_save), name="bad_args")

    def ltxv2_on_train_end(output_dir):  # forgot @hookimpl
        pass

    with pytest.raises(PluginError, match="not decorated with @hookimpl"):
        plugins.register_plugin(make_plugin("no_marker", ltxv2_on_train_end=ltxv2_on_train_end), name="no_marker")
    assert pm.get_plugin("bad_args") is None and pm.get_plugin("no_marker") is None


def test_exceptions_inside_plugins_name_the_plugin_and_hook(pm):
    def boom(*_args):
        raise ZeroDivisionError("bad step")

    plugins.register_plugin(make_plugin("crashy", ltxv2_on_step_end=hookimpl(lambda step, logs: boom()),
                                        ltxv2_extra_losses=hookimpl(lambda outputs: boom()),
                                        ltxv2_register_weighting_schemes=hookimpl(lambda register: register("x", 3))),
                            name="crashy")
    with pytest.raises(PluginError, match=r"plugin 'crashy' in hook ltxv2_on_step_end: ZeroDivisionError: bad step") as info:
        plugins.on_step_end(1, {})
    assert (info.value.plugin, info.value.hook) == ("crashy", "ltxv2_on_step_end")
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(PluginError, match="'crashy' in hook ltxv2_extra_losses"):
        plugins.extra_losses({}, {}, None)
    with pytest.raises(PluginError, match="'crashy' in hook ltxv2_register_weighting_schemes.*'x' must be callable"):
        plugins.weighting_schemes()


def test_transform_batch_chains_plugins(pm):
    @hookimpl(tryfirst=True)
    def add_one(batch):
        return {**batch, "n": batch["n"] + 1}

    @hookimpl
    def times_ten(batch, args):
        return {**batch, "n": batch["n"] * args.factor}

    plugins.register_plugin(make_plugin("times", ltxv2_transform_batch=times_ten), name="times")
    plugins.register_plugin(make_plugin("plus", ltxv2_transform_batch=add_one), name="plus")
    plugins.register_plugin(make_plugin("keep", ltxv2_transform_batch=hookimpl(lambda batch: None)), name="keep")
    batch = {"n": 1}
    assert plugins.transform_batch(batch, argparse.Namespace(factor=10)) == {"n": 20}  # (1 + 1) * 10
    assert batch == {"n": 1}
    plugins.register_plugin(make_plugin("bad", ltxv2_transform_batch=hookimpl(lambda batch: [1])), name="bad")
    with pytest.raises(PluginError, match="'bad' in hook ltxv2_transform_batch: must return a batch dict"):
        plugins.transform_batch(batch, argparse.Namespace(factor=10))


def test_extra_losses_are_collected_and_names_must_be_unique(pm):
    plugins.register_plugin(make_plugin("one", ltxv2_extra_losses=hookimpl(
        lambda outputs: [("l1", torch.tensor(1.0)), ("l2", torch.tensor(2.0))])), name="one")
    plugins.register_plugin(make_plugin("none", ltxv2_extra_losses=hookimpl(lambda: None)), name="none")
    assert [(n, float(v)) for n, v in plugins.extra_losses({}, {}, None)] == [("l1", 1.0), ("l2", 2.0)]
    plugins.register_plugin(make_plugin("two", ltxv2_extra_losses=hookimpl(lambda: [("l2", torch.tensor(0.0))])), name="two")
    with pytest.raises(PluginError, match="hook ltxv2_extra_losses: loss 'l2' is returned twice"):
        plugins.extra_losses({}, {}, None)
    plugins.unregister_plugin("two")
    plugins.register_plugin(make_plugin("flat", ltxv2_extra_losses=hookimpl(lambda: torch.tensor(1.0))), name="flat")
    with pytest.raises(PluginError, match="'flat' in hook ltxv2_extra_losses: must return a list of"):
        plugins.extra_losses({}, {}, None)


def test_lifecycle_hooks_reach_plugins(pm, tmp_path):
    calls = []
    assert not plugins.implemented("ltxv2_on_step_end")  # the trainer then skips flushing lazy LoRA updates
    plugins.register_plugin(make_plugin(
        "recorder",
        ltxv2_on_train_start=hookimpl(lambda args, model: calls.append(("start", args.lr, model))),
        ltxv2_on_step_end=hookimpl(lambda step, logs: logs.update(seen=step)),
        ltxv2_on_save=hookimpl(lambda path, step: calls.append(("save", path, step))),
        ltxv2_on_train_end=hookimpl(lambda output_dir: calls.append(("end", output_dir))),
    ), name="recorder")
    assert plugins.implemented("ltxv2_on_step_end")
    logs = {"loss": 1.0}
    plugins.on_train_start(argparse.Namespace(lr=1e-4), "model")
    plugins.on_step_end(3, logs)
    plugins.on_save(tmp_path / "a.safetensors", 3)
    plugins.on_train_end(tmp_path)
    assert calls == [("start", 1e-4, "model"), ("save", tmp_path / "a.safetensors", 3), ("end", tmp_path)]
    assert logs == {"loss": 1.0, "seen": 3}


@pytest.mark.parametrize("value, autoload, allow, block", [
    (None, True, None, set()),
    ("all", True, None, set()),
    ("none", False, None, set()),
    ("a,b", True, {"a", "b"}, set()),
    (["a", "-b"], True, {"a"}, {"b"}),
    ("-x -default.audio_loss", True, None, {"x", "default.audio_loss"}),
])
def test_plugins_flag_parsing(value, autoload, allow, block):
    policy = PluginPolicy.parse(value)
    assert (policy.autoload, policy.allow, policy.block) == (autoload, allow and frozenset(allow), frozenset(block))


def test_plugins_flag_errors(pm):
    with pytest.raises(PluginError, match="'none' cannot be combined"):
        plugins.configure("none,a")
    with pytest.raises(PluginError, match="not a plugin name"):
        plugins.configure("-")


def test_blocking_builtins(pm):
    plugins.configure("default.sigmas")  # an allow list never unloads built-ins
    assert BUILTINS <= loaded_names()
    plugins.configure("-default.audio_loss")
    assert "default.audio_loss" not in loaded_names()
    assert plugins.audio_loss(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), None, None, {}, None) is None
    assert "default.audio_loss     built-in  blocked" in plugins.describe_plugins()
    plugins.configure("-default.weighting")
    assert plugins.weighting_schemes() == {} and "default.audio_loss" in loaded_names()


def test_hand_registered_plugins_survive_configure_unless_blocked(pm):
    plugins.register_plugin(make_plugin("mine", ltxv2_on_train_end=hookimpl(lambda: None)), name="mine")
    plugins.configure(None)
    assert "mine" in loaded_names()
    plugins.configure("-mine")
    assert "mine" not in loaded_names() and plugins.register_plugin(make_plugin("mine2"), name="mine") is None


def test_describe_plugins_lists_every_plugin_and_its_hooks(pm):
    plugins.register_plugin(make_plugin("mine", ltxv2_on_save=hookimpl(lambda path: None),
                                        ltxv2_add_arguments=hookimpl(lambda parser: None)), name="mine")
    table = plugins.describe_plugins()
    lines = table.splitlines()
    assert lines[0].startswith("Plugins (entry-point group 'ltxv2_diffusers'; autoload on")
    assert lines[1].split() == ["NAME", "SOURCE", "STATUS", "HOOKS"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) >= BUILTINS | {"mine"}
    assert rows["mine"].split(None, 3)[1:] == ["manual", "loaded", "add_arguments, on_save"]
    assert rows["default.sigmas"].split(None, 3)[1:] == ["built-in", "loaded", "sample_sigmas"]


def test_bad_plugin_results_are_errors_naming_the_plugin(pm):
    @hookimpl
    def ltxv2_register_weighting_schemes(register):
        register("first_only", lambda sigmas, modality: sigmas[:1])
        register("negative", lambda sigmas, modality: -sigmas)
        register("raises", lambda sigmas, modality: sigmas.no_such_method())

    @hookimpl
    def ltxv2_sample_sigmas(batch_size, modality):
        return {"video": torch.rand(batch_size + 1), "audio": torch.full((batch_size,), 1.5)}[modality]

    @hookimpl
    def ltxv2_audio_loss(pred, target):
        return (pred - target).pow(2)  # forgot to reduce

    plugins.register_plugin(make_plugin("sloppy", ltxv2_register_weighting_schemes=ltxv2_register_weighting_schemes,
                                        ltxv2_sample_sigmas=ltxv2_sample_sigmas, ltxv2_audio_loss=ltxv2_audio_loss),
                            name="sloppy")
    schemes, sigmas = plugins.weighting_schemes(), torch.tensor([0.2, 0.6])
    with pytest.raises(PluginError, match=r"'sloppy' in hook weighting scheme 'first_only': returned weights of shape \(1,\)"):
        schemes["first_only"](sigmas, "video")
    with pytest.raises(PluginError, match="'sloppy' in hook weighting scheme 'negative': returned negative or non-finite"):
        schemes["negative"](sigmas, "video")
    with pytest.raises(PluginError, match="'sloppy' in hook weighting scheme 'raises': AttributeError") as info:
        schemes["raises"](sigmas, "video")
    assert isinstance(info.value.__cause__, AttributeError)
    with pytest.raises(PluginError, match=r"'sloppy' in hook ltxv2_sample_sigmas: returned sigmas of shape \(3,\)"):
        plugins.sample_sigmas(2, 16, "video", None)
    with pytest.raises(PluginError, match=r"'sloppy' in hook ltxv2_sample_sigmas: returned sigmas outside \[0, 1\]"):
        plugins.sample_sigmas(2, 16, "audio", None)
    with pytest.raises(PluginError, match=r"'sloppy' in hook ltxv2_audio_loss: returned a tensor of shape \(1, 2, 3\)"):
        plugins.audio_loss(torch.ones(1, 2, 3), torch.zeros(1, 2, 3), None, None, {}, None)


def test_hook_wrappers_work_where_pluggy_calls_the_hook(pm):
    @hookimpl(wrapper=True)
    def ltxv2_sample_sigmas():
        sigmas = yield  # whatever the answering plugin returned (here the built-in sampler)
        return sigmas.clamp(0.25, 0.75)

    plugins.register_plugin(make_plugin("clamp", ltxv2_sample_sigmas=ltxv2_sample_sigmas), name="clamp")
    sigmas = plugins.sample_sigmas(64, 1024, "video", argparse.Namespace(sigma_sampling="uniform"),
                                   torch.Generator().manual_seed(0))
    assert sigmas.shape == (64,) and float(sigmas.min()) == 0.25 and float(sigmas.max()) == 0.75

    @hookimpl(wrapper=True)
    def ltxv2_extra_losses():
        terms = yield
        return terms + [[("from_wrapper", torch.tensor(1.0))]]

    plugins.register_plugin(make_plugin("wrap_losses", ltxv2_extra_losses=ltxv2_extra_losses), name="wrap_losses")
    assert [name for name, _ in plugins.extra_losses({}, {}, None)] == ["from_wrapper"]
    plugins.register_plugin(make_plugin("wrap_batch", ltxv2_transform_batch=hookimpl(wrapper=True)(lambda: (yield))),
                            name="wrap_batch")
    with pytest.raises(PluginError, match="'wrap_batch' in hook ltxv2_transform_batch: hook wrappers cannot chain"):
        plugins.transform_batch({}, None)
