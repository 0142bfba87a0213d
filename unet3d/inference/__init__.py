"""unet3d.inference."""
