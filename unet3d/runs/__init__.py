"""Run folders: who owns an output folder, what experiment it holds, and how it is written.

- :mod:`unet3d.runs.files`: the one atomic-write helper of the package (a full disk or a
  read-only folder is one `StorageError` line), the ``flock`` lock shared by concurrent jobs,
  the cleanup of killed writers' temporary files, and the test hook ``UNET3D_TEST_FAULT``.
- :mod:`unet3d.runs.checkpoint_files`: which checkpoints of a ``checkpoints/`` folder are
  complete, and what killed saves left there (read without TensorFlow).
- :mod:`unet3d.runs.identity`: the job's record (fold, num_folds, seed, data set, model,
  precision): its MLflow tags, ``run_identity.json`` (written once when the folder is first
  used and read back by resume, evaluate, predict and the sweep tools) and ``results.json``.
- :mod:`unet3d.runs.resolvers`: the resolvers conf/ names run folders with (launch time and
  id shared by every rank of a launch).
- :mod:`unet3d.runs.naming`: sweep job folder names without path separators.
- :mod:`unet3d.runs.results`: the jobs of a sweep and their ``results.json``.
- :mod:`unet3d.runs.folder`: claiming a folder for a job (refusing a busy one, and a used one
  without ``resume=true``; taking over one whose job stopped before its first checkpoint),
  Hydra's ``.hydra/`` files and the job's ``run.log``, written only once the job may use the
  folder.
"""
