"""How a data set's cases lie on disk and what their labels mean.

``resolve`` turns the ``data`` group's layout keys into a ``DataLayout`` (its reader and label
convention); ``convention`` holds the label conventions (BraTS 2019, BraTS 2023+, MSD brain)
and ``regions`` their region <-> label arithmetic; ``case_folders`` (BraTS case folders) and
``dataset_json`` (MSD, nnU-Net raw) find the cases; ``cases`` loads one case with clear errors.
The reader classes a YAML names are re-exported by ``unet3d.data.readers``.
"""
