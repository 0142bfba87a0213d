"""Serving: unet3d's prediction as an MLflow model, and its registration in the Model Registry.

Above the modes (it runs ``mode=predict``), below the runner and the sweep callback (they
publish a finished job or a sweep's fold ensemble):

- :mod:`unet3d.serving.codec`: the request / response of ``POST /invocations`` (base64 NIfTI
  per modality in, base64 NIfTI segmentation out), its signature and input example;
- :mod:`unet3d.serving.pyfunc_model`: ``SegmentationModel`` (the ``mlflow.pyfunc`` that
  ``mlflow models serve`` loads) and ``log_segmentation_model`` (its checkpoints and settings
  as artifacts of a run);
- :mod:`unet3d.serving.registration`: ``tracking.register_model`` / ``tracking.model_alias``:
  ``publish_model`` logs the pyfunc and registers it as a new version.

Reading a ``models:/`` or ``runs:/`` reference back to checkpoints is
:mod:`unet3d.tracking.references` (no mode involved).
"""
