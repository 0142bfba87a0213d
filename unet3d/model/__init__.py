"""unet3d.model."""
