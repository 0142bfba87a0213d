"""The served segmentation model: an MLflow ``python_function`` that runs ``mode=predict``.

``log_segmentation_model`` logs a ``SegmentationModel`` (``mlflow.pyfunc.PythonModel``) on a
run; its artifacts are the checkpoints of the job (or of every fold of a sweep: an ensemble),
each with its run's recorded settings (``run_identity.json``, ``.hydra/config.yaml``: the
network is rebuilt from them, nnU-Net style), and the job's resolved config (``config.yaml``:
inference settings, sliding window, TTA). ``predict`` writes the request's case(s) as raw
NIfTI files and runs ``unet3d.modes.predict.predict`` on them: the same code, settings and
output as ``python -m unet3d.run mode=predict predict.input_dir=...``.

Request (``POST /invocations`` of ``mlflow models serve``, JSON)::

    {"dataframe_records": [{"case_id": "case_001",
                            "t1": "<base64 of case_001_t1.nii.gz>", "t1ce": "...",
                            "t2": "...", "flair": "..."}]}

one row per case; each modality column is a base64-encoded NIfTI file (``.nii.gz`` or
``.nii``), all on one grid; ``case_id`` is optional (default ``case_<row>``; letters, digits,
``_``, ``-``, ``.``). Response: ``{"predictions": [{"case_id": ..., "segmentation": "<base64 of
<case_id>.nii.gz>"}]}``: uint8 labels in the data set's label convention (BraTS 2019: 0, 1, 2,
4) on the input's grid and affine, exactly the file ``mode=predict`` writes. A malformed
request (missing column, bad base64, not NIfTI, another grid) is answered with HTTP 400 and
one line naming the case and the column (``MlflowException`` INVALID_PARAMETER_VALUE).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.pyfunc

logger = logging.getLogger(__name__)

#: Input columns: one base64 NIfTI per modality, in the model's channel order.
MODALITY_COLUMNS: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
CASE_COLUMN = "case_id"
#: Output column: the base64 of the ``<case_id>.nii.gz`` segmentation.
OUTPUT_COLUMN = "segmentation"
#: Artifact keys of the logged model.
CONFIG_ARTIFACT = "config"
MEMBERS_ARTIFACT = "members"
_CASE_ID = re.compile(r"^[A-Za-z0-9_.-]+$")
_NIFTI_MAGIC = (b"\x1f\x8b", b"n+1\x00", b"ni1\x00")


def _bad_request(message: str) -> Exception:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _decode(row: int, case_id: str, column: str, value: Any) -> bytes:
    """The NIfTI bytes of one cell; a bad cell is a 400 naming the case and column."""
    if not isinstance(value, str) or not value:
        raise _bad_request(f"case {case_id} (row {row}): column {column!r}: expected the "
                           "base64 of a NIfTI file, got " + type(value).__name__)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_request(f"case {case_id} (row {row}): column {column!r}: not valid "
                           "base64") from None
    if not (data[:2] == _NIFTI_MAGIC[0] or data[344:348] in _NIFTI_MAGIC[1:]):
        raise _bad_request(f"case {case_id} (row {row}): column {column!r}: not a NIfTI "
                           "file (.nii or .nii.gz)")
    return data


def write_request_cases(frame: Any, folder: Path) -> list[str]:
    """Write each row as ``<folder>/<case_id>/<case_id>_<modality>.nii[.gz]`` (BraTS layout).

    Args:
        frame: pandas DataFrame with the ``MODALITY_COLUMNS`` (base64 NIfTI) and an optional
            ``case_id`` column.
        folder: an empty folder.

    Returns:
        The case ids in row order.

    Raises:
        MlflowException: INVALID_PARAMETER_VALUE (HTTP 400) for a missing column, an empty
            request, a bad or repeated case id, or a cell that is not a base64 NIfTI file.
    """
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    missing = [column for column in MODALITY_COLUMNS if column not in frame.columns]
    if missing:
        raise _bad_request(f"request: missing column(s) {missing}; expected "
                           f"{list(MODALITY_COLUMNS)} (base64 NIfTI) and optional 'case_id'")
    if len(frame) == 0:
        raise _bad_request("request: no case (empty input)")
    case_ids: list[str] = []
    for row, record in enumerate(frame.to_dict("records")):
        case_id = record.get(CASE_COLUMN)
        case_id = f"case_{row:03d}" if case_id is None or case_id != case_id else str(case_id)
        if not _CASE_ID.match(case_id) or case_id in (".", ".."):
            raise _bad_request(f"row {row}: case_id {case_id!r}: use letters, digits, '_', "
                               "'-' and '.'")
        if case_id in case_ids:
            raise _bad_request(f"row {row}: case_id {case_id!r} is repeated")
        case_ids.append(case_id)
        case_dir = folder / case_id
        case_dir.mkdir(parents=True)
        for column in MODALITY_COLUMNS:
            data = _decode(row, case_id, column, record.get(column))
            suffix = ".nii.gz" if data[:2] == _NIFTI_MAGIC[0] else ".nii"
            (case_dir / f"{case_id}_{column}{suffix}").write_bytes(data)
    return case_ids


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


class SegmentationModel(mlflow.pyfunc.PythonModel):
    """unet3d's whole prediction (``mode=predict``) as an MLflow pyfunc; see the module doc."""

    def load_context(self, context: Any) -> None:
        """Read the logged config and point ``predict.checkpoint`` at the logged members."""
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(context.artifacts[CONFIG_ARTIFACT])
        members = Path(context.artifacts[MEMBERS_ARTIFACT])
        member_dirs = sorted(str(path) for path in members.iterdir() if path.is_dir())
        OmegaConf.set_struct(cfg, False)
        cfg.predict = {"input_dir": None, "output_dir": None, "checkpoint": member_dirs,
                       "fold": None, "save_probabilities": False, "overwrite": True}
        cfg.tracking.enabled = False
        cfg.data = serving_data_config(cfg.data, Path(member_dirs[0]))
        self.cfg = cfg
        xla = bool(OmegaConf.select(cfg, "precision.xla", default=False))
        # No device / strategy set-up: the served process predicts on its default device.
        self.runtime = SimpleNamespace(precision=SimpleNamespace(xla=xla), context=None,
                                       device=None)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None
                ) -> Any:
        """Segment each row's case; return a DataFrame (``case_id``, ``segmentation``).

        Args:
            context: MLflow's model context (unused: ``load_context`` read it).
            model_input: pandas DataFrame, one case per row (see the module doc).
            params: unused.

        Raises:
            MlflowException: INVALID_PARAMETER_VALUE for a malformed request or a case that
                ``mode=predict`` refuses (its one-line error).
        """
        import pandas as pd
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
                raise _bad_request(str(error).strip().splitlines()[0]) from None
            segmentations = []
            for case_id in case_ids:
                path = folder / "predictions" / f"{case_id}.nii.gz"
                segmentations.append(base64.b64encode(path.read_bytes()).decode("ascii"))
        return pd.DataFrame({CASE_COLUMN: case_ids, OUTPUT_COLUMN: segmentations})


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


def example_request(shape: Sequence[int] = (16, 16, 16), seed: int = 0) -> Any:
    """A one-row request of random NIfTI volumes (the logged input example), as a DataFrame."""
    import io

    import nibabel as nib
    import numpy as np
    import pandas as pd

    generator = np.random.default_rng(seed)
    row: dict[str, str] = {CASE_COLUMN: "example"}
    for column in MODALITY_COLUMNS:
        volume = generator.uniform(0, 100, size=tuple(shape)).astype(np.float32)
        image = nib.Nifti1Image(volume, np.eye(4))
        buffer = io.BytesIO()
        file_map = nib.Nifti1Image.make_file_map({"image": buffer, "header": buffer})
        image.to_file_map(file_map)
        import gzip

        row[column] = base64.b64encode(gzip.compress(buffer.getvalue(), mtime=0)).decode()
    return pd.DataFrame([row])


def model_signature() -> Any:
    """Strings in (``case_id`` optional, one column per modality), strings out."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = [ColSpec("string", CASE_COLUMN, required=False)] + [
        ColSpec("string", column) for column in MODALITY_COLUMNS]
    outputs = [ColSpec("string", CASE_COLUMN), ColSpec("string", OUTPUT_COLUMN)]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


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
