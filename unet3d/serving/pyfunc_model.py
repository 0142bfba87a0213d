"""The served segmentation model: an MLflow ``python_function`` that runs ``mode=predict``.

``log_segmentation_model`` logs a ``SegmentationModel`` (``mlflow.pyfunc.PythonModel``) on a
run; its artifacts are the checkpoints of the job (or of every fold of a sweep: an ensemble),
each with its run's recorded settings (``run_identity.json``, ``.hydra/config.yaml``: the
network is rebuilt from them, nnU-Net style), and the job's resolved config (``config.yaml``:
inference settings, sliding window, TTA). ``predict`` writes the request's case(s) as raw
NIfTI files (``unet3d.serving.codec``) and runs ``unet3d.modes.predict.predict`` on them: the
same code, settings and output as ``python -m unet3d.run mode=predict predict.input_dir=...``.

Limits of the served process (``serving_limits``): the ``serve`` group logged with the model
(``conf/serve/default.yaml``), each key overridden where it is served by ``UNET3D_SERVE_<KEY>``
(e.g. ``UNET3D_SERVE_MAX_CONCURRENT=1``). A volume over ``serve.max_voxels`` /
``serve.max_volume_bytes`` is refused from its header (HTTP 413) before it is decompressed; a
request that finds ``serve.max_concurrent`` predictions running is refused at once with HTTP
503 and ``retry_after_s`` in its body (MLflow's scoring server sets no response header from a
model: docs/serving.md). A case that ``mode=predict`` cannot segment is HTTP 400 with the line
``mode=predict`` logs for it, the server's temporary paths replaced by the request's column.

The logged model refers to this class by its module path
(``unet3d.serving.pyfunc_model.SegmentationModel``): a model logged before the class moved
here (``unet3d.tracking.pyfunc_model``) no longer loads and is logged again with
``unet3d.serving.registration.publish_model``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.pyfunc

from unet3d.serving.codec import (
    VolumeLimits,
    bad_request,
    client_line,
    request_error,
    request_files,
    response_frame,
    write_request_cases,
)

logger = logging.getLogger(__name__)

#: Artifact keys of the logged model.
CONFIG_ARTIFACT = "config"
MEMBERS_ARTIFACT = "members"
#: Keys that conf/ gained after a model may have been logged, with the value every model
#: logged before them ran with (a served config is the job's as it was recorded).
LATER_KEYS = {"inference.region_threshold": 0.5, "precision.reprobe": False,
              "evaluation.lesionwise": "off"}
#: Where it is served, ``UNET3D_SERVE_<KEY>`` overrides ``serve.<key>`` of the logged model.
SERVE_ENVIRONMENT_PREFIX = "UNET3D_SERVE_"
#: The keys of the ``serve`` group (conf/serve/default.yaml), each an integer >= 1.
SERVE_KEYS = ("max_voxels", "max_volume_bytes", "max_concurrent", "retry_after_s")


@dataclass(frozen=True)
class ServingLimits:
    """The served process' limits (``serve.*``; see ``serving_limits``)."""

    volume: VolumeLimits
    max_concurrent: int
    retry_after_s: int


def serving_limits(serve_cfg: Mapping[str, Any] | None,
                   environ: Mapping[str, str] | None = None) -> ServingLimits:
    """The limits from the logged ``serve`` group, the defaults and the environment.

    Args:
        serve_cfg: the ``serve`` group logged with the model (None or missing keys: a model
            logged before the group existed; ``conf/serve/default.yaml`` of this checkout
            gives them).
        environ: the environment (default ``os.environ``); ``UNET3D_SERVE_<KEY>`` wins.

    Raises:
        ConfigError: a value that is not an integer >= 1 (the message names the variable or
            the key).
    """
    from unet3d.errors import ConfigError

    environ = os.environ if environ is None else environ
    values: dict[str, Any] = dict(_default_serve_settings())
    values.update({key: value for key, value in (serve_cfg or {}).items() if key in SERVE_KEYS})
    for key in SERVE_KEYS:
        name = SERVE_ENVIRONMENT_PREFIX + key.upper()
        where, value = f"serve.{key}", values.get(key)
        if environ.get(name, "").strip():
            where, value = name, environ[name].strip()
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{name}: must be an integer >= 1, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: must be an integer >= 1, got {value!r}")
        values[key] = value
    return ServingLimits(VolumeLimits(values["max_voxels"], values["max_volume_bytes"]),
                         values["max_concurrent"], values["retry_after_s"])


def _default_serve_settings() -> dict[str, Any]:
    """``conf/serve/default.yaml`` beside the package (the one home of the defaults)."""
    from omegaconf import OmegaConf

    path = Path(__file__).resolve().parents[2] / "conf" / "serve" / "default.yaml"
    if not path.is_file():
        return {}
    return dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def serving_data_config(data_cfg: Any, run_dir: Path) -> Any:
    """The ``data`` group a served model reads its request's cases with.

    The request's case is written as ``<case>/<case>_{t1,t1ce,t2,flair}.nii.gz``
    (``write_request_cases``); its segmentation is written in the label convention the model
    was trained on (recorded in its run's ``run_identity.json``), whatever the training data
    set's own layout was.
    """
    from omegaconf import OmegaConf

    from unet3d.inference.models import recorded_convention

    convention = recorded_convention(run_dir).to_dict()
    data = OmegaConf.to_container(data_cfg, resolve=False) if OmegaConf.is_config(data_cfg) \
        else dict(data_cfg)
    data.update({"reader": {"_target_": "unet3d.data.readers.CaseFolders"},
                 "convention": convention["name"], "labels": convention["labels"],
                 "regions": convention["regions"],
                 "region_order": convention.get("region_order")})
    return OmegaConf.create(data)


def _served_precision(cfg: Any) -> Any:
    """Set the served process' Keras dtype policy from ``cfg.precision``; its PrecisionInfo.

    The device type is the process' default one (GPU or MLU when visible, else CPU). No probe
    cache is written (``paths.data_dir`` is the training host's folder).
    """
    import tensorflow as tf

    from unet3d.runtime.devices import ACCELERATOR_TYPES, resolve_device_type
    from unet3d.runtime.precision import configure_precision

    available = {kind: tf.config.list_physical_devices(kind) for kind in ACCELERATOR_TYPES}
    return configure_precision(cfg.precision, resolve_device_type("auto", available))


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """unet3d's whole prediction (``mode=predict``) as an MLflow pyfunc; see the module doc."""

    def load_context(self, context: Any) -> None:
        """Read the logged config and point ``predict.checkpoint`` at the logged members."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(context.artifacts[CONFIG_ARTIFACT])
        members = Path(context.artifacts[MEMBERS_ARTIFACT])
        member_dirs = sorted(str(path) for path in members.iterdir() if path.is_dir())
        OmegaConf.set_struct(cfg, False)
        for key, value in LATER_KEYS.items():
            if OmegaConf.select(cfg, key) is None:
                OmegaConf.update(cfg, key, value)
        cfg.predict = {"input_dir": None, "output_dir": None, "checkpoint": member_dirs,
                       "fold": None, "save_probabilities": False, "overwrite": True}
        cfg.tracking.enabled = False
        cfg.data = serving_data_config(cfg.data, Path(member_dirs[0]))
        self.cfg = cfg
        self.limits = serving_limits(cfg.get("serve"))
        self._slots = threading.BoundedSemaphore(self.limits.max_concurrent)
        logger.info("serving limits: %d voxels and %d bytes per volume, %d prediction(s) at "
                    "once (serve.* / UNET3D_SERVE_*)", self.limits.volume.max_voxels,
                    self.limits.volume.max_bytes, self.limits.max_concurrent)
        # No device / strategy set-up: the served process predicts on its default device, in
        # the precision the job's `precision` group gives there (precision=auto decides on this
        # host, as mode=predict does), so that it answers what mode=predict writes here.
        self.runtime = SimpleNamespace(precision=_served_precision(cfg), context=None,
                                       device=None)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None
                ) -> Any:
        """Segment each row's case; return a DataFrame (``case_id``, ``segmentation``).

        Args:
            context: MLflow's model context (unused: ``load_context`` read it).
            model_input: pandas DataFrame, one case per row (``unet3d.serving.codec``).
            params: unused.

        Raises:
            MlflowException: HTTP 400 for a malformed request or a case that ``mode=predict``
                refuses (its one line per failed case, the column instead of the server's
                path), 413 for a volume over the limits, 503 when ``serve.max_concurrent``
                predictions are running (body field ``retry_after_s``), 500 for an unexpected
                error (its type and first line; the traceback is in the server's log).
        """
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="unet3d-serve-") as scratch:
            folder = Path(scratch)
            replacements: dict[str, str] = {}
            try:
                case_ids = write_request_cases(model_input, folder / "cases",
                                               self.limits.volume)
                replacements = request_files(folder / "cases", case_ids)
                if not self._slots.acquire(blocking=False):
                    raise request_error(
                        f"busy: {self.limits.max_concurrent} prediction(s) running "
                        f"(serve.max_concurrent); retry after {self.limits.retry_after_s} s",
                        503, retry_after_s=self.limits.retry_after_s)
                try:
                    return self._predict_cases(folder, case_ids, replacements)
                finally:
                    self._slots.release()
            except MlflowException:
                raise
            except Exception as error:  # noqa: BLE001 - one line for the client, the log the rest
                logger.exception("prediction request failed")
                reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise request_error(
                    f"internal error: {type(error).__name__}: "
                    f"{client_line(reason, replacements, folder)} (see the server's log)", 500
                ) from None

    def _predict_cases(self, folder: Path, case_ids: list[str],
                       replacements: Mapping[str, str]) -> Any:
        """Run ``mode=predict`` on the written cases; its errors as the client's one line."""
        import keras
        from omegaconf import OmegaConf

        from unet3d.errors import CaseFailures, Unet3dError
        from unet3d.modes.predict import predict

        # Keras' global dtype policy is per thread; the server may answer on another thread.
        keras.mixed_precision.set_global_policy(self.runtime.precision.policy_name)
        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=False))
        cfg.predict.input_dir = str(folder / "cases")
        cfg.predict.output_dir = str(folder / "predictions")
        try:
            predict(cfg, self.runtime, None, folder / "job")
        except CaseFailures as error:
            lines = [client_line(line, replacements, folder) for _, line in error.failures]
            raise bad_request("; ".join(lines) or client_line(str(error), replacements, folder)
                              ) from None
        except Unet3dError as error:
            raise bad_request(client_line(str(error), replacements, folder)) from None
        return response_frame(case_ids, [folder / "predictions" / f"{case_id}.nii.gz"
                                         for case_id in case_ids])


def stage_members(prefixes: Sequence[str], folder: Path) -> Path:
    """Copy each checkpoint with its run's records into ``<folder>/member-<i>/`` (a run dir).

    Each member holds ``checkpoints/<prefix files>`` and a ``checkpoint`` state file, plus its
    run's ``run_identity.json`` and ``.hydra/config.yaml`` when present (the settings that
    ``load_ensemble`` rebuilds the network from).
    """
    from unet3d.inference.checkpoints import run_dir_of

    for index, prefix in enumerate(prefixes):
        member = folder / f"member-{index}"
        checkpoints = member / "checkpoints"
        checkpoints.mkdir(parents=True)
        prefix_path = Path(prefix)
        for path in prefix_path.parent.glob(prefix_path.name + ".*"):
            shutil.copy2(path, checkpoints / path.name)
        (checkpoints / "checkpoint").write_text(
            f'model_checkpoint_path: "{prefix_path.name}"\n'
            f'all_model_checkpoint_paths: "{prefix_path.name}"\n', encoding="utf-8")
        run_dir = run_dir_of(prefix)
        for relative in ("run_identity.json", ".hydra/config.yaml"):
            if (run_dir / relative).is_file():
                (member / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run_dir / relative, member / relative)
    return folder


def log_segmentation_model(tracker: Any, cfg: Any, checkpoint_spec: Any,
                           name: str = "segmentation") -> str | None:
    """Log the pyfunc of ``checkpoint_spec``'s model(s) on the tracker's run.

    Args:
        tracker: a running ``unet3d.tracking.tracker.Tracker`` (a job's or a sweep parent's).
        cfg: the job's config (resolved into the model's ``config.yaml``: inference settings).
        checkpoint_spec: what ``predict.checkpoint`` accepts: the job's output dir, or the
            sweep dir (every fold: an ensemble).
        name: the logged model's name.

    Returns:
        ``models:/<logged model id>`` (also set as run tag ``unet3d.model_uri``), or None when
        inactive.

    Raises:
        CheckpointError, ConfigError: no checkpoint in ``checkpoint_spec``.
        MlflowException: the store refuses the model.
    """
    import mlflow
    from mlflow.models import Model

    from unet3d.inference.checkpoints import resolve_model_checkpoints
    from unet3d.serving.codec import example_request, model_signature
    from unet3d.tracking.keras_model import default_pip_requirements
    from unet3d.tracking.values import config_yaml

    if not getattr(tracker, "running", False):
        return None
    prefixes = resolve_model_checkpoints(checkpoint_spec)
    with tempfile.TemporaryDirectory(prefix="unet3d-pyfunc-") as scratch:
        folder = Path(scratch)
        members = stage_members(prefixes, folder / MEMBERS_ARTIFACT)
        config_path = folder / "config.yaml"
        config_path.write_text(config_yaml(cfg), encoding="utf-8")
        client = tracker.client
        logged = client.create_logged_model(str(tracker.experiment_id), name=name,
                                            source_run_id=str(tracker.run_id),
                                            model_type="unet3d-segmentation")
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(str(tracker.tracking_uri))
        try:
            info = Model.log(
                artifact_path=None, name=name, flavor=mlflow.pyfunc,
                python_model=SegmentationModel(),
                artifacts={CONFIG_ARTIFACT: str(config_path), MEMBERS_ARTIFACT: str(members)},
                signature=model_signature(), input_example=example_request(),
                pip_requirements=[*default_pip_requirements(), f"mlflow=={mlflow.__version__}"],
                model_id=logged.model_id, run_id=str(tracker.run_id),
                flavor_name="pyfunc.CustomPythonModel",
            )
        finally:
            mlflow.set_tracking_uri(previous_uri)
    uri = f"models:/{info.model_id}"
    tracker.set_tags({"unet3d.model_uri": uri, "unet3d.pyfunc_members": str(len(prefixes))})
    logger.info("MLflow: logged the segmentation pyfunc %s (%d model(s)) on run %s", uri,
                len(prefixes), tracker.run_id)
    return uri
