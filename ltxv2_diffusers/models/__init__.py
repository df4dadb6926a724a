"""Model side: presets, adapters, scheduler, checkpoint loading."""
