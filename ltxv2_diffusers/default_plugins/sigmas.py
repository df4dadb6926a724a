"""Built-in sigma sampler: the scheduler's training distribution, chosen with ``--sigma_sampling``."""

from ltxv2_diffusers.hookspecs import hookimpl

# Mirrors models.scheduler.SAMPLING_CHOICES (which validates it); importing the scheduler here
# would pull diffusers into `--help`.
SIGMA_SAMPLING_CHOICES = ("shifted_logit_normal", "uniform")
DEFAULT_SIGMA_SAMPLING = "shifted_logit_normal"


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
    # --timestep_sampling (musubi's flag, more methods and a timestep range) and --sigma_sampling share it.
    from ltxv2_diffusers.training.sigma_sampling import SigmaSampler

    return SigmaSampler.from_args(args).sample(batch_size, num_tokens, generator=generator)
