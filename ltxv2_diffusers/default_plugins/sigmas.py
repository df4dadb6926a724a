"""Built-in sigma sampler: the scheduler's training distribution, chosen with ``--sigma_sampling``."""

from ltxv2_diffusers.hookspecs import hookimpl
from ltxv2_diffusers.timesteps import SIGMA_SAMPLING_CHOICES

DEFAULT_SIGMA_SAMPLING = SIGMA_SAMPLING_CHOICES[0]

_schedulers: dict = {}


def training_scheduler(sampling: str = DEFAULT_SIGMA_SAMPLING):
    """One scheduler per sampling choice; sampling sigmas does not change its state."""
    if sampling not in _schedulers:
        # diffusers loads only when sigmas are first drawn, not when plugins are listed
        from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

        _schedulers[sampling] = LTXV2FlowMatchScheduler(training_sampling=sampling)
    return _schedulers[sampling]


@hookimpl(trylast=True)
def ltxv2_sample_sigmas(batch_size, num_tokens, args, generator):
    sampling = getattr(args, "sigma_sampling", None) or DEFAULT_SIGMA_SAMPLING
    return training_scheduler(sampling).sample_sigmas(batch_size, num_tokens, generator=generator)
