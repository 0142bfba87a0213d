"""The process runtime: devices, precision, distribution, launch agreement and signals.

- :mod:`unet3d.runtime.devices`: `configure_devices` (CPU, GPU or MLU per process).
- :mod:`unet3d.runtime.precision`: `configure_precision`, `wrap_optimizer`.
- :mod:`unet3d.runtime.distribute`: `create_context` (tf.distribute or Horovod behind one
  `DistributedContext`), `process_env` (rank and size from the launcher).
- :mod:`unet3d.runtime.launch`: one launch time and output folder for every rank.
- :mod:`unet3d.runtime.signals`: SIGTERM as `TerminationRequested`.
"""
