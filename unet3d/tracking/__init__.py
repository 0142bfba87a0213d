"""Logging to MLflow, and nothing else.

- :mod:`unet3d.tracking.tracker`: `Tracker` (one job's run, no-op off the chief) and
  `tracked_run` (the run's end status from how a block exits).
- :mod:`unet3d.tracking.store`: where the store is; SQLite locking and retries.
- :mod:`unet3d.tracking.batches`, :mod:`unet3d.tracking.values`,
  :mod:`unet3d.tracking.keras_model`: what is written to a run and how.
- :mod:`unet3d.tracking.sweep_callback`, :mod:`unet3d.tracking.summary`: a sweep's parent run
  and its cross-validation summary; :mod:`unet3d.tracking.run_reference`: `mlflow-run:` paths.
- :mod:`unet3d.tracking.figures`, :mod:`unet3d.tracking.case_figures`: PNG figures.
"""
