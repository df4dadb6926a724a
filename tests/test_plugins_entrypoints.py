"""The first-party plugins in plugins/, installed with pip and found through their entry points.

pip installs them (--no-deps --no-build-isolation) into a private ``--target`` folder that is put
on ``sys.path`` only while a test uses it: entry-point discovery is the real one
(``importlib.metadata`` reading the installed ``.dist-info``), but the shared environment, and
other test processes running beside this one, never see the plugins, even if a run is killed.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ltxv2_diffusers import plugins
from ltxv2_diffusers.plugins import PluginError

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("ltxv2-p2-weighting", "ltxv2-audio-delta-loss")
PLUGIN_MODULES = ("ltxv2_p2_weighting", "ltxv2_audio_delta_loss", "ltxv2_broken_import", "ltxv2_typo_hook")

# Installed plugins that must fail loudly: one cannot import, one misspells a hook.
BROKEN = {
    "ltxv2-broken-import": ("broken_import", "ltxv2_broken_import", "import ltxv2_no_such_dependency\n"),
    "ltxv2-typo-hook": ("typo_hook", "ltxv2_typo_hook", """
        from ltxv2_diffusers.hookspecs import hookimpl

        @hookimpl
        def ltxv2_register_weighting_scheme(register):
            register("never", lambda sigmas, modality: sigmas)
        """),
}


def pip_install(sources: list[Path], target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "--target", str(target), *map(str, sources)],
        check=True,
    )


@pytest.fixture(scope="session")
def plugin_sites(tmp_path_factory) -> dict[str, Path]:
    """One pip run installing copies of plugins/* (copied so builds never write into the checkout)
    and two broken plugins; the broken ones are then moved to a folder of their own."""
    root = tmp_path_factory.mktemp("installed_plugins")
    sources = []
    for name in FIRST_PARTY:
        dst = root / "src" / name
        shutil.copytree(REPO / "plugins" / name, dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        sources.append(dst)
    for dist, (ep_name, module, code) in BROKEN.items():
        src = root / "src" / dist
        src.mkdir(parents=True)
        (src / f"{module}.py").write_text(textwrap.dedent(code))
        (src / "pyproject.toml").write_text((REPO / "plugins" / FIRST_PARTY[0] / "pyproject.toml").read_text())
        (src / "setup.cfg").write_text(textwrap.dedent(f"""
            [metadata]
            name = {dist}
            version = 0.0.1
            [options]
            py_modules = {module}
            [options.entry_points]
            ltxv2_diffusers =
                {ep_name} = {module}
            """))
        sources.append(src)
    site, broken = root / "site", root / "broken_site"
    pip_install(sources, site)
    broken.mkdir()
    for _, module, _ in BROKEN.values():
        for path in [site / f"{module}.py", *site.glob(f"{module}-*.dist-info")]:
            shutil.move(path, broken / path.name)
    return {"first_party": site, "broken": broken}


def use_site(site: Path, monkeypatch):
    """Put an installed-plugins folder on sys.path and reload the plugin manager; returns an undo."""
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()

    def undo():
        sys.path.remove(str(site))
        for module in PLUGIN_MODULES:
            sys.modules.pop(module, None)
        importlib.invalidate_caches()
        monkeypatch.undo()
        plugins.configure(None)

    return undo


@pytest.fixture
def installed(plugin_sites, monkeypatch):
    undo = use_site(plugin_sites["first_party"], monkeypatch)
    plugins.configure(None)
    yield plugin_sites["first_party"]
    undo()


def infos() -> dict[str, plugins.PluginInfo]:
    return {r.name: r for r in plugins.plugin_infos()}


def test_entry_points_are_discovered_with_their_distribution(installed):
    rows = infos()
    assert rows["p2_weighting"] == plugins.PluginInfo(
        "p2_weighting", "ltxv2-p2-weighting", "0.1.0", ("ltxv2_register_weighting_schemes",), "loaded")
    assert rows["audio_delta_loss"] == plugins.PluginInfo(
        "audio_delta_loss", "ltxv2-audio-delta-loss", "0.1.0", ("ltxv2_add_arguments", "ltxv2_extra_losses"), "loaded")
    # the module on sys.path is the pip-installed copy, not the checkout's source
    assert Path(sys.modules["ltxv2_p2_weighting"].__file__).parent == installed


def test_weighting_plugin_adds_p2_as_its_formula_says(installed):
    schemes = plugins.weighting_schemes()
    assert {"p2", "none", "cosmap", "min_snr"} <= set(schemes)
    sigmas = torch.tensor([0.0, 0.1, 0.5, 0.8, 1.0])
    snr = ((1 - sigmas[1:]) / sigmas[1:]) ** 2
    want = torch.cat([torch.zeros(1), 1.0 / (1.0 + snr)])  # (k + snr)^-γ, k = γ = 1; 0 at σ = 0
    torch.testing.assert_close(schemes["p2"](sigmas, "video"), want)
    per_token = torch.rand(2, 7, generator=torch.Generator().manual_seed(0))
    assert schemes["p2"](per_token, "audio").shape == (2, 7)


def test_train_cli_lists_plugins_and_offers_their_flags(installed, capsys):
    from ltxv2_diffusers.cli.train import main

    assert main(["--list_plugins"]) == 0
    table = capsys.readouterr().out
    rows = {line.split()[0]: line.split(None, 4) for line in table.splitlines()[2:]}
    assert rows["p2_weighting"][1:] == ["ltxv2-p2-weighting", "0.1.0", "loaded", "register_weighting_schemes"]
    assert rows["audio_delta_loss"][1:] == ["ltxv2-audio-delta-loss", "0.1.0", "loaded", "add_arguments, extra_losses"]
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--audio_delta_loss_weight" in help_text
    weighting_help = re.search(r"--weighting_scheme WEIGHTING_SCHEME ([^\]].{0,300})", help_text).group(1)
    assert "p2" in weighting_help and "min_snr" in weighting_help


@pytest.fixture(scope="module")
def audio_outputs():
    """Real outputs of a tiny audio adapter (2 items, the second with 2 of 5 valid audio frames)."""
    from ltxv2_diffusers.models.adapter import LTXAudioModelAdapter, context_widths
    from ltxv2_diffusers.models.presets import build_components

    transformer = build_components("tiny", seed=0, components=("transformer",))["transformer"]
    gen = torch.Generator().manual_seed(0)
    video_width, audio_width = context_widths(transformer.config)
    batch = {
        "audio_latents": torch.randn(2, 8, 5, 16, generator=gen),
        "audio_lengths": torch.tensor([5, 2]),
        "text": torch.randn(2, 6, video_width + audio_width, generator=gen),  # the AV layout
        "text_mask": torch.ones(2, 6, dtype=torch.bool),
        "fps": torch.tensor([24.0, 24.0]),
    }
    adapter = LTXAudioModelAdapter.from_components(transformer)
    with torch.no_grad():
        outputs = adapter(batch, sigmas={"audio": torch.tensor([0.7, 0.2])}, generator=torch.Generator().manual_seed(1))
    return outputs, batch


def delta_l1_by_hand(pred, target, mask) -> float:
    """|Δpred − Δtarget| averaged over channels and over consecutive frame pairs that are both valid."""
    total, count = 0.0, 0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1] - 1):
            if mask[b, n] and mask[b, n + 1]:
                d = (pred[b, n + 1] - pred[b, n]) - (target[b, n + 1] - target[b, n])
                total += float(d.abs().sum())
                count += pred.shape[2]
    return total / count


def test_audio_loss_plugin_adds_its_term_to_the_training_loss(installed, audio_outputs):
    from ltxv2_diffusers.training.args import build_parser
    from ltxv2_diffusers.training.losses import compute_losses

    outputs, batch = audio_outputs
    audio = outputs["audio"]
    assert audio.mask.tolist() == [[True] * 5, [True, True, False, False, False]]
    parser = build_parser(plugins.add_arguments)
    args = parser.parse_known_args(["--audio_delta_loss_weight", "0.5"])[0]
    args.weighting_scheme, args.audio_loss_weight = "none", 1.0

    terms = plugins.extra_losses(outputs, batch, args)
    assert [name for name, _ in terms] == ["audio_delta"]
    expected = 0.5 * delta_l1_by_hand(audio.pred.float(), audio.target, audio.mask)
    assert float(terms[0][1]) == pytest.approx(expected, rel=1e-5)

    total, logged = compute_losses(outputs, batch, args)
    assert float(logged["loss/audio_delta"]) == pytest.approx(expected, rel=1e-5)
    assert float(total) == pytest.approx(float(logged["loss/audio"]) + expected, rel=1e-5)
    args.audio_delta_loss_weight = 0.0
    assert plugins.extra_losses(outputs, batch, args) == []


def test_plugins_flag_blocks_allows_and_disables_entry_points(installed):
    plugins.configure("-audio_delta_loss")
    rows = infos()
    assert rows["audio_delta_loss"].status == "blocked" and rows["p2_weighting"].status == "loaded"
    assert plugins.extra_losses({}, {}, None) == []
    plugins.configure("p2_weighting")
    assert infos()["audio_delta_loss"].status == "off (not in --plugins)"
    assert "p2" in plugins.weighting_schemes()
    plugins.configure("none")
    rows = infos()
    assert {rows[n].status for n in ("p2_weighting", "audio_delta_loss")} == {"off (autoload disabled)"}
    assert "autoload off" in plugins.describe_plugins().splitlines()[0]
    assert "p2" not in plugins.weighting_schemes() and "cosmap" in plugins.weighting_schemes()
    with pytest.raises(PluginError, match="--plugins names not_installed, not installed .*audio_delta_loss, p2_weighting"):
        plugins.configure("not_installed")


def test_broken_plugins_fail_loudly_with_their_names(plugin_sites, monkeypatch):
    undo = use_site(plugin_sites["broken"], monkeypatch)
    try:
        with pytest.raises(PluginError, match="plugin 'broken_import': entry point 'ltxv2_broken_import' of "
                                              "ltxv2-broken-import failed to import: ModuleNotFoundError") as info:
            plugins.configure(None)
        assert info.value.plugin == "broken_import"
        with pytest.raises(PluginError, match="plugin 'typo_hook' in hook ltxv2_register_weighting_scheme: unknown "
                                              "hook .*did you mean ltxv2_register_weighting_schemes"):
            plugins.configure("-broken_import")
        plugins.configure("-broken_import,-typo_hook")
        assert {infos()[n].status for n in ("broken_import", "typo_hook")} == {"blocked"}
    finally:
        undo()
