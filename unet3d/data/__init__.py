"""The data path: a data set's raw cases -> per-case TFRecords -> a fold -> ``tf.data`` input.

Top level: the path a job walks, in its order, and the two modules a data YAML names.

- ``prepare`` (the entry, ``prepare_data(cfg)``): builds the data set, makes its raw cases
  ready, preprocesses them and writes the fold split, under locks shared by concurrent jobs.
- ``datasets`` and ``readers``: the components ``conf/data/<name>.yaml`` names with
  ``_target_`` (``unet3d.data.datasets.SyntheticBraTS`` / ``BraTSFolder``,
  ``unet3d.data.readers.CaseFolders`` / ``MSDFolder`` / ``NNUNetRawFolder``). They stay here so
  that a YAML's path is short and the paths recorded in saved run configs and exported models
  keep working.
- ``preprocess`` (one case: clip, rescale, brain box), ``crop`` (the brain box, also used by
  inference), ``tfrecord`` (one record per case), ``parallel`` (worker processes),
  ``folds`` (the per-patient K-fold split).
- ``pipeline`` (``tf.data``: training crops, evaluation cases), ``training_source``
  (cached or streamed training elements), ``memory`` (``data.cache: auto``).
- ``_files``: JSON reads, cache keys and progress shared by the modules above.

Three rooms hold what the path calls on:

- ``synthetic/``: the generated BraTS-format data set (``data=synthetic``): ``generate``
  (``generate_dataset``), ``case`` (one case in memory), ``fields``, ``lesions``,
  ``layouts`` (the same cases in each public layout) and ``stats`` (what the cases promise).
  Its options are checked in ``unet3d.config.synthetic_options``.
- ``augment/``: the training-crop transforms of ``conf/augmentation/``: ``compose``
  (``Augmentation``, nnU-Net's order), ``spatial``, ``intensity``.
- ``layouts/``: how a data set lies on disk and what its labels mean: ``resolve``
  (``DataLayout``, ``resolve_layout``), ``convention`` (label values, classes, regions),
  ``case_folders`` and ``dataset_json`` (the readers' code), ``cases`` (load one case) and
  ``regions`` (region probabilities <-> label values).

The ``__init__`` files here import nothing: importing one module loads only what it imports.
"""
