"""Data augmentation of the training crops (``conf/augmentation/``, mounted at
``data.augmentation``).

``compose`` reads the settings (``Augmentation.from_config``) and applies the transforms in
nnU-Net's order; ``spatial`` resamples a crop from its whole volume (rotation, scaling, elastic
deformation); ``intensity`` holds the transforms on the z-scored crop (noise, blur, brightness,
contrast, low resolution, gamma). All run as TensorFlow ops in the ``tf.data`` workers.
"""
