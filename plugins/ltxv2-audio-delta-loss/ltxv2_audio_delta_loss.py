"""An extra audio loss term: match the frame-to-frame change of the audio latents.

With packed audio tokens ``[B, N, C]`` (one token per audio latent frame), ``Δx[n] = x[n+1] − x[n]``
and ``V`` the pairs of consecutive frames that are both valid (mask), the term is

    audio_delta = weight · Σ_{b,n∈V,c} |Δpred − Δtarget| / (|V| · C)

an L1 penalty on the temporal derivative of the velocity error, which discourages frame-to-frame
jitter (audible clicks) that a per-frame MSE barely sees. ``--audio_delta_loss_weight`` sets
``weight`` (default 0.1; 0 turns the term off). Logged as ``loss/audio_delta``.
"""

from ltxv2_diffusers.hookspecs import hookimpl

DEFAULT_WEIGHT = 0.1
LOSS_NAME = "audio_delta"


@hookimpl
def ltxv2_add_arguments(parser):
    parser.add_argument(
        "--audio_delta_loss_weight", type=float, default=DEFAULT_WEIGHT,
        help=f"weight of the audio temporal-difference L1 loss (ltxv2-audio-delta-loss plugin; "
             f"default {DEFAULT_WEIGHT}, 0 = off)",
    )


def audio_delta_loss(pred, target, mask=None):
    """Unweighted mean |Δpred − Δtarget| over valid consecutive frame pairs and channels."""
    import torch

    err = pred.float() - target.float()
    delta = (err[:, 1:] - err[:, :-1]).abs()
    if mask is None:
        return delta.mean()
    mask = mask.to(err.device, torch.bool)
    pairs = mask[:, 1:] & mask[:, :-1]
    count = pairs.sum() * err.shape[-1]
    if int(count) == 0:
        return (delta * 0.0).sum()  # no valid pair; keeps the graph connected
    return (delta * pairs.unsqueeze(-1)).sum() / count


@hookimpl
def ltxv2_extra_losses(outputs, args):
    audio = outputs.get("audio")
    weight = float(getattr(args, "audio_delta_loss_weight", DEFAULT_WEIGHT))
    if audio is None or weight == 0.0 or audio.pred.shape[1] < 2:
        return None
    return [(LOSS_NAME, weight * audio_delta_loss(audio.pred, audio.target, audio.mask))]
