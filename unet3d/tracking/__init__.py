"""Logging to MLflow, and reading its references back; nothing else.

- :mod:`unet3d.tracking.tracker`: `Tracker` (one job's run, no-op off the chief);
  :mod:`unet3d.tracking.run_status`: `tracked_run` (the run's end status from how a block
  exits).
- :mod:`unet3d.tracking.store`: where the store is; SQLite locking and retries.
- :mod:`unet3d.tracking.batches`, :mod:`unet3d.tracking.values`,
  :mod:`unet3d.tracking.keras_model`, :mod:`unet3d.tracking.datasets`: what is written to a
  run and how.
- :mod:`unet3d.tracking.parent_run`, :mod:`unet3d.tracking.summary`,
  :mod:`unet3d.tracking.cv_runs`, :mod:`unet3d.tracking.study`: a sweep's parent run, its
  cross-validation summary and an Optuna study's run (driven by ``unet3d.sweep_callback``).
- :mod:`unet3d.tracking.references`: ``runs:/<id>`` and ``models:/<name>@<alias>`` back to
  the run's folder (the checkpoints of evaluate and predict).
- :mod:`unet3d.tracking.figures`: PNG figures (case slices, training curves).

The served model and its registration are :mod:`unet3d.serving`.
"""
