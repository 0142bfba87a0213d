"""unet3d.training."""
