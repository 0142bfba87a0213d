"""The served model of an export folder: an MLflow ``python_function`` that needs no TensorFlow.

``ExportedSegmentationModel`` answers the same requests as ``unet3d.serving.pyfunc_model``'s
``SegmentationModel`` (``unet3d.serving.codec``: base64 NIfTI per modality in, the base64
segmentation out) by running ``unet3d.modes.predict.predict`` on an export folder
(``mode=export``) with ``inference.engine`` OpenVINO or ONNX Runtime: the same sliding window,
brain-box crop, TTA, labels and post-processing as ``mode=predict``, and no import of
TensorFlow or Keras anywhere on its path (``tests/serving/test_export_model.py`` loads and
queries it in a process where importing either fails). Its environment is unet3d's own
requirements plus one engine: ``pip install "unet3d[openvino]"`` or ``"unet3d[onnxruntime]"``
(no ``cpu`` extra); docs/deployment.md gives the sizes.

The logged model's artifacts are the export folder and the export job's resolved config
(``config.yaml``: data layout and inference settings); ``inference.engine`` is ``auto`` unless
the export job named OpenVINO, ONNX Runtime or ``openvino_int8`` (the INT8 IR), and ``auto``
probes once per serving host (cache ``~/.cache/unet3d/engine_probe.json``, or
``UNET3D_ENGINE_CACHE``). Predictions run in float32 (the INT8 IR's quantized layers in INT8).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.pyfunc

from unet3d.serving.codec import bad_request, response_frame, write_request_cases

logger = logging.getLogger(__name__)

#: Artifact keys of the logged model.
CONFIG_ARTIFACT = "config"
EXPORT_ARTIFACT = "export"
#: Environment variable naming the engine probe cache of the served model.
CACHE_VARIABLE = "UNET3D_ENGINE_CACHE"


def served_config(cfg: Any, export_dir: Path) -> Any:
    """The ``predict`` config of the served model: ``cfg`` reading requests with the export."""
    from omegaconf import OmegaConf

    from unet3d.inference.engine_choice import USER_CACHE
    from unet3d.inference.export_folder import read_export

    export = read_export(export_dir)
    convention = export.convention.to_dict()
    served = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(served, False)
    served.predict = {"input_dir": None, "output_dir": None, "checkpoint": str(export_dir),
                      "fold": None, "save_probabilities": False, "overwrite": True,
                      "postprocess": True}
    served.tracking = {"enabled": False}
    data = OmegaConf.to_container(served.data, resolve=False)
    data.update({"reader": {"_target_": "unet3d.data.readers.CaseFolders"},
                 "convention": convention["name"], "labels": convention["labels"],
                 "regions": convention["regions"],
                 "region_order": convention.get("region_order")})
    served.data = data
    served.inference.engine_cache = os.environ.get(CACHE_VARIABLE) or str(USER_CACHE)
    return served


class ExportedSegmentationModel(mlflow.pyfunc.PythonModel):
    """``mode=predict`` on an export folder as an MLflow pyfunc; see the module doc."""

    def load_context(self, context: Any) -> None:
        """Read the logged config and point ``predict.checkpoint`` at the logged export."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(context.artifacts[CONFIG_ARTIFACT])
        self.cfg = served_config(cfg, Path(context.artifacts[EXPORT_ARTIFACT]))
        precision = SimpleNamespace(xla=False, compute_dtype="float32", policy_name="float32")
        self.runtime = SimpleNamespace(precision=precision, context=None, device=None)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None
                ) -> Any:
        """Segment each row's case; return a DataFrame (``case_id``, ``segmentation``).

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for a malformed request or a case that
                ``mode=predict`` refuses (its one-line error).
        """
        from omegaconf import OmegaConf

        from unet3d.errors import Unet3dError
        from unet3d.modes.predict import predict

        with tempfile.TemporaryDirectory(prefix="unet3d-serve-") as scratch:
            folder = Path(scratch)
            case_ids = write_request_cases(model_input, folder / "cases")
            cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=False))
            cfg.predict.input_dir = str(folder / "cases")
            cfg.predict.output_dir = str(folder / "predictions")
            try:
                predict(cfg, self.runtime, None, folder / "job")
            except Unet3dError as error:
                raise bad_request(str(error).strip().splitlines()[0]) from None
            return response_frame(case_ids, [folder / "predictions" / f"{case_id}.nii.gz"
                                             for case_id in case_ids])


def export_requirements() -> list[str]:
    """The served environment: unet3d's own requirements and the installed engines, pinned."""
    from importlib import metadata

    requirements = []
    for distribution in ("mlflow", "numpy", "scipy", "nibabel", "omegaconf", "hydra-core",
                         "pandas", "openvino", "onnxruntime"):
        try:
            requirements.append(f"{distribution}=={metadata.version(distribution)}")
        except metadata.PackageNotFoundError:
            continue
    return requirements


def log_export_model(tracker: Any, cfg: Any, export_dir: Path,
                     name: str = "segmentation-export") -> str | None:
    """Log the pyfunc of an export folder on the tracker's run.

    Args:
        tracker: a running ``unet3d.tracking.tracker.Tracker``.
        cfg: the export job's config (resolved into the model's ``config.yaml``).
        export_dir: the export folder.
        name: the logged model's name.

    Returns:
        ``models:/<logged model id>`` (also run tag ``unet3d.export_model_uri``), or None when
        the tracker is inactive.

    Raises:
        CheckpointError: ``export_dir`` is not a readable export folder.
        MlflowException: the store refuses the model.
    """
    import mlflow
    from mlflow.models import Model
    from omegaconf import OmegaConf

    from unet3d.inference.export_folder import read_export
    from unet3d.serving.codec import example_request, model_signature
    from unet3d.tracking.values import config_yaml

    if not getattr(tracker, "running", False):
        return None
    folder = read_export(export_dir)
    served = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    OmegaConf.set_struct(served, False)
    engine = served.inference.get("engine")
    if engine not in ("openvino", "onnxruntime", "openvino_int8") \
            or folder.engine_format(str(engine)) is None:  # only an engine the folder can feed
        served.inference.engine = "auto"
    with tempfile.TemporaryDirectory(prefix="unet3d-export-pyfunc-") as scratch:
        config_path = Path(scratch) / "config.yaml"
        config_path.write_text(config_yaml(served), encoding="utf-8")
        logged = tracker.client.create_logged_model(
            str(tracker.experiment_id), name=name, source_run_id=str(tracker.run_id),
            model_type="unet3d-segmentation-export")
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(str(tracker.tracking_uri))
        try:
            info = Model.log(
                artifact_path=None, name=name, flavor=mlflow.pyfunc,
                python_model=ExportedSegmentationModel(),
                artifacts={CONFIG_ARTIFACT: str(config_path), EXPORT_ARTIFACT: str(export_dir)},
                signature=model_signature(), input_example=example_request(),
                pip_requirements=export_requirements(), model_id=logged.model_id,
                run_id=str(tracker.run_id), flavor_name="pyfunc.CustomPythonModel",
            )
        finally:
            mlflow.set_tracking_uri(previous_uri)
    uri = f"models:/{info.model_id}"
    tracker.set_tags({"unet3d.export_model_uri": uri})
    logger.info("MLflow: logged the export's served model %s (no TensorFlow needed) on run %s",
                uri, tracker.run_id)
    return uri
