"""unet3d.data."""
