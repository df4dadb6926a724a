"""Built-in sigma sampler: the scheduler's training distribution (shifted logit-normal)."""

from ltxv2_diffusers.hookspecs import hookimpl

_scheduler = None


def _training_scheduler():
    # One default-config scheduler per process; it is stateless for sampling.
    global _scheduler
    if _scheduler is None:
        from ltxv2_diffusers.models.scheduler import LTXV2FlowMatchScheduler

        _scheduler = LTXV2FlowMatchScheduler()
    return _scheduler


@hookimpl(trylast=True)
def ltxv2_sample_sigmas(batch_size, num_tokens, generator):
    return _training_scheduler().sample_sigmas(batch_size, num_tokens, generator=generator)
