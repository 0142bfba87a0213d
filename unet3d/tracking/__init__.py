"""unet3d.tracking."""
