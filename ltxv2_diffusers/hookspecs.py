"""Hook specifications: every extension point of ltxv2-diffusers.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` and named after the
hooks below. A plugin may accept any subset of a hook's arguments, in any order. Plugins are
found through the entry-point group ``ltxv2_diffusers`` (see ``docs/plugins.md``); built-in
behaviour lives in ``ltxv2_diffusers.default_plugins`` as ordinary ``trylast`` plugins, so any
installed plugin runs before it and, for first-result hooks, replaces it.

Core code never calls ``pm.hook`` directly; it goes through the typed functions in
``ltxv2_diffusers.plugins``.
"""

from __future__ import annotations

from pluggy import HookimplMarker, HookspecMarker

PROJECT_NAME = "ltxv2_diffusers"

hookspec = HookspecMarker(PROJECT_NAME)
hookimpl = HookimplMarker(PROJECT_NAME)


@hookspec
def ltxv2_add_arguments(parser):
    """Add command-line flags to the trainer's parser.

    Arguments: ``parser`` — the ``argparse.ArgumentParser`` of ``ltxv2-train-lora``. Add your own
    flags (prefix them with your plugin's name to avoid clashes); their values reach every other
    hook as attributes of ``args``.
    Returns: nothing (return values are ignored). Every plugin is called.
    """


@hookspec
def ltxv2_register_weighting_schemes(register):
    """Register loss-weighting schemes selectable with ``--weighting_scheme``.

    Arguments: ``register(name, fn)`` — call it once per scheme. ``fn(sigmas, modality)`` gets
    the training sigmas (float tensor ``[B]`` or per-token ``[B, N]``, values in ``[0, 1]``) and
    the modality (``"video"`` or ``"audio"``) and returns weights of the same shape as
    ``sigmas`` (one per sample, or one per token). A scheme from an installed plugin replaces a
    built-in one of the same name; two installed plugins registering one name is an error.
    Returns: nothing. Every plugin is called.
    """


@hookspec(firstresult=True)
def ltxv2_sample_sigmas(batch_size, num_tokens, modality, args, generator):
    """Draw the training noise levels (sigmas) for one batch of one modality.

    Arguments: ``batch_size`` (int), ``num_tokens`` (int, tokens of this modality per sample,
    which sets the resolution-dependent shift), ``modality`` (``"video"`` or ``"audio"``),
    ``args`` (parsed trainer flags), ``generator`` (``torch.Generator`` or None).
    Returns: a float tensor ``[batch_size]`` (or per-token ``[batch_size, num_tokens]``) with
    values in ``[0, 1]``, or ``{"timesteps": tensor}`` in the run's ``--ltxv2_timestep_format``
    (converted to sigmas by its definition), or None to let the next plugin decide.
    The first non-None result wins; the built-in calls the scheduler's training sampler.
    """


@hookspec(firstresult=True)
def ltxv2_audio_loss(pred, target, mask, sigmas, batch, args):
    """Compute the audio loss term.

    Arguments: ``pred`` and ``target`` — packed audio model output and flow-matching target
    ``[B, N, C]``, both already multiplied by sqrt(sigma weighting × ``--audio_loss_weight``)
    so that a plain squared error carries the weights; ``mask`` — bool ``[B, N]``, True on
    valid (non-padding) audio tokens; ``sigmas`` — the audio sigmas ``[B]`` or ``[B, N]``;
    ``batch`` — the batch dict; ``args`` — parsed trainer flags.
    Returns: a scalar tensor, or None to let the next plugin decide.
    The first non-None result wins; the built-in is the masked MSE (mean over valid tokens and
    channels).
    """


@hookspec
def ltxv2_extra_losses(outputs, batch, args):
    """Add extra loss terms to the training objective.

    Arguments: ``outputs`` — the adapter's output dict ``{"video": ModalityOutput,
    "audio": ModalityOutput}`` (only trained modalities; each has ``pred``, ``target``,
    ``mask``, ``sigmas``); ``batch`` — the batch dict; ``args`` — parsed trainer flags.
    Returns: a list of ``(name, loss)`` pairs (scalar tensors, already scaled by the plugin),
    or None. Every plugin is called; all terms are summed into the total loss and logged under
    their names (``loss/<name>``); a name used twice is an error.
    """


@hookspec
def ltxv2_register_text_encoder_backends(register):
    """Register text-encoder backends selectable by name.

    Arguments: ``register(name, factory)`` — ``factory(**kwargs)`` builds the backend object.
    Import heavy modules inside the factory, not at plugin import time. A backend from an
    installed plugin replaces a built-in one of the same name (built-ins: ``gemma``, ``t5``).
    Returns: nothing. Every plugin is called.
    """


@hookspec
def ltxv2_transform_batch(batch, args):
    """Transform a training batch before it reaches the model.

    Arguments: ``batch`` — the batch dict (see docs/architecture.md); ``args`` — parsed flags.
    Returns: a new batch dict, or None to leave it unchanged. Plugins are chained: each one
    receives the batch returned by the one before it (installed plugins before built-ins).
    """


@hookspec
def ltxv2_conditioning_masks(batch, args, generator):
    """Add a conditioning kind: target tokens kept clean this step (timestep 0, left out of the loss).

    Arguments: ``batch`` — the batch dict (after ``ltxv2_transform_batch``); ``args`` — parsed flags;
    ``generator`` — the step's ``torch.Generator``, a list of one per item, or None (draw from it for
    reproducible runs).
    Returns: a dict ``{"video": mask, "audio": mask}`` (either key optional) of bool tensors ``[B, N]``
    over the target's packed tokens (video: ``F*H*W`` in frame, row, column order; audio: latent
    frames), True = kept clean; or None. Every plugin is called; the masks are OR-ed with each other
    and with the built-in first-frame / extension masks. To condition on extra content instead (a depth
    map, a pose video), put its latents in the batch as ``reference_latents`` from
    ``ltxv2_transform_batch`` and train with an ``--ic_lora_strategy`` that uses a video reference.
    """


@hookspec
def ltxv2_on_train_start(args, model):
    """Called once before the first training step.

    Arguments: ``args`` — parsed trainer flags; ``model`` — the model adapter being trained.
    Returns: nothing. Every plugin is called.
    """


@hookspec
def ltxv2_on_step_end(step, logs):
    """Called after every optimizer step.

    Arguments: ``step`` — the global step just finished (int, from 1); ``logs`` — dict of the
    values logged for this step (``loss``, ``loss/<name>``, ``lr``, ...). Plugins may add keys.
    The model's LoRA tensors already hold this step's update when it is called (with
    ``--offload_optimizer`` the trainer applies it up front whenever a plugin implements this hook).
    Returns: nothing. Every plugin is called.
    """


@hookspec
def ltxv2_on_save(path, step):
    """Called after a LoRA checkpoint was written.

    Arguments: ``path`` — the saved file or directory (``pathlib.Path``); ``step`` — the global
    step it was saved at.
    Returns: nothing. Every plugin is called.
    """


@hookspec
def ltxv2_on_train_end(output_dir):
    """Called once after training finished and the final LoRA was saved.

    Arguments: ``output_dir`` — the run's output directory (``pathlib.Path``).
    Returns: nothing. Every plugin is called.
    """
