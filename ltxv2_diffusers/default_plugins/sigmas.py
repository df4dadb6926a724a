"""Built-in sigma sampler: the scheduler's training distribution, chosen with ``--sigma_sampling``
(or musubi's ``--timestep_sampling``, which adds methods and a timestep range)."""

from ltxv2_diffusers.hookspecs import hookimpl


@hookimpl(trylast=True)
def ltxv2_sample_sigmas(batch_size, num_tokens, args, generator):
    # diffusers loads only when sigmas are first drawn, not when plugins are listed
    from ltxv2_diffusers.training.sigma_sampling import SigmaSampler

    return SigmaSampler.from_args(args).sample(batch_size, num_tokens, generator=generator)
