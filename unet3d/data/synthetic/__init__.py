"""The synthetic BraTS-format data set (``data=synthetic``), generated, never downloaded.

``generate`` writes a data set (``generate_dataset``: NIfTI cases and a manifest, in any public
layout of ``layouts``); ``case`` builds one case in memory from its seed and index, with
``fields`` (smooth random fields) and ``lesions`` (the extra lesions, blur and noise of harder
settings); ``stats`` measures what the cases promise (``conf/data/synthetic_hard.yaml``). The
options and their checks: ``unet3d.config.synthetic_options``.
"""
