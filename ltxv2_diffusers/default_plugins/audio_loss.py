"""Built-in audio loss: masked MSE over valid audio tokens and all channels."""

from ltxv2_diffusers.hookspecs import hookimpl


@hookimpl(trylast=True)
def ltxv2_audio_loss(pred, target, mask):
    from ltxv2_diffusers.training.losses import masked_mse

    return masked_mse(pred, target, mask)
