"""Built-in weighting schemes: none, sigma_sqrt, cosmap, logit_normal, min_snr."""

from ltxv2_diffusers.hookspecs import hookimpl


@hookimpl(trylast=True)
def ltxv2_register_weighting_schemes(register):
    from ltxv2_diffusers.training.weighting import BUILTIN_WEIGHTING_SCHEMES

    for name, fn in BUILTIN_WEIGHTING_SCHEMES.items():
        register(name, fn)
