"""Built-in sigma sampler: the scheduler's training distribution, chosen with ``--sigma_sampling``."""

from ltxv2_diffusers.hookspecs import hookimpl

# Mirrors models.scheduler.SAMPLING_CHOICES (which validates it); importing the scheduler here
# would pull diffusers into `--help`.
SIGMA_SAMPLING_CHOICES = ("shifted_logit_normal", "uniform")
DEFAULT_SIGMA_SAMPLING = "shifted_logit_normal"

_schedulers: dict = {}


def training_scheduler(sampling: str = DEFAULT_SIGMA_SAMPLING):
    """One scheduler per sampling choice; sampling sigmas does not change its state."""
    if sampling not in _schedulers:
        from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

        _schedulers[sampling] = LTXV2FlowMatchScheduler(training_sampling=sampling)
    return _schedulers[sampling]


@hookimpl(trylast=True)
def ltxv2_add_arguments(parser):
    parser.add_argument(
        "--sigma_sampling", choices=SIGMA_SAMPLING_CHOICES, default=DEFAULT_SIGMA_SAMPLING,
        help="training sigma distribution of the built-in sampler: the official LTX-2 shifted "
             "logit-normal (shift grows with token count) or uniform (pair it with "
             "--weighting_scheme logit_normal for the SD3 objective)",
    )


@hookimpl(trylast=True)
def ltxv2_sample_sigmas(batch_size, num_tokens, args, generator):
    sampling = getattr(args, "sigma_sampling", None) or DEFAULT_SIGMA_SAMPLING
    return training_scheduler(sampling).sample_sigmas(batch_size, num_tokens, generator=generator)
