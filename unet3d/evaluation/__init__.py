"""unet3d.evaluation."""
