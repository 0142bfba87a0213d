"""unet3d.runtime."""
