"""unet3d: a Hydra-configured 3D U-Net framework for BraTS brain-tumour segmentation."""

__version__ = "0.1.0"
