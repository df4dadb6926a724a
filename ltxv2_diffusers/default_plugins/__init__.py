"""Built-in behaviour, written as ordinary ``trylast`` plugins so any installed plugin overrides it.

``DEFAULT_PLUGINS`` maps each plugin's registered name to its module; ``plugins.py`` registers
them before any third-party plugin. Block one with ``--plugins=-<name>``.
"""

DEFAULT_PLUGINS: dict[str, str] = {
    "default.weighting": "ltxv2_diffusers.default_plugins.weighting",
    "default.sigmas": "ltxv2_diffusers.default_plugins.sigmas",
    "default.audio_loss": "ltxv2_diffusers.default_plugins.audio_loss",
    "default.text_backends": "ltxv2_diffusers.default_plugins.text_backends",
}
