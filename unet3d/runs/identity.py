"""The record of a job: the experiment its run folder holds, and what the job ended with.

``RunIdentity`` is the one record of a job's fold, seed, data set, model and precision, read
from its config once. It writes everything that names them: the MLflow tags of the job's run
(``tags``, ``run_name``), ``<run dir>/run_identity.json`` (``write``, when the job first uses
its folder, see :mod:`unet3d.runs.folder`; a resume never rewrites it) and, at the end,
``<run dir>/results.json`` (``write_result``). Resume, evaluate, predict and the sweep tools
read them back (``read_identity``, ``read_job_result``). ``run_identity.json`` (``format``
1)::

    {"format": 1, "created": "2026-11-29T13:00:00+00:00", "mode": "train_and_evaluate",
     "fold": 0, "num_folds": 5, "seed": 42,
     "data": {"name": "synthetic", "synthetic": "<hash of the generator settings> | null",
              "raw_dir": "/abs/path | null", "cases": "<16 hex digits> | null",
              "num_cases": 40 | null,
              "convention": {...the data set's label convention...} | null},
     "model": {...the composed `model` group...},
     "precision": {"name": "auto", "policy": "auto", "resolved": "mixed_bfloat16", "device": "CPU"}}

``results.json``::

    {"status": "FINISHED" | "FAILED" | "KILLED", "fold": int | null,
     "overrides": ["fold=0", "precision=amp"], "metrics": {"Dice_WT": 0.81, ...},
     "error": str | null, "mlflow_run_id": str | null, "written_at": ..., ...extra keys}

``data.cases`` is the SHA-256 (16 hex digits) of the sorted case ids and ``data.convention``
the data set's label convention (``unet3d.data.layouts.convention.LabelConvention.to_dict``: label
values and names, evaluation regions); both are filled in once, after the data set is prepared
(`record_cases`). Prediction translates the model's classes through the recorded convention.
Runs written before this file existed are read from their ``.hydra/config.yaml`` instead
(`read_identity`, without ``data.cases``).

What identifies an experiment (a resume that differs in any of these is refused):
``fold``, ``num_folds``, ``seed``, ``data.name``, ``data.synthetic``, ``data.cases`` and every
key of ``model``. ``data.raw_dir`` and ``precision`` are recorded, not compared: moving a data
set or changing the precision policy does not change what was learnt (``precision.resolved``, the
policy the job ran with, filled in by the runner, is what a resume under ``auto`` keeps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unet3d.runs.files import write_json_atomic

log = logging.getLogger(__name__)

#: File name of the record in the run folder.
IDENTITY_FILE = "run_identity.json"
#: File name of the job's result in the run folder.
RESULTS_FILE = "results.json"
#: The statuses of ``results.json``.
RESULT_STATUSES = ("FINISHED", "FAILED", "KILLED")
#: Hydra's composed config of a run (the fallback for runs without an identity file).
HYDRA_CONFIG = Path(".hydra") / "config.yaml"
FORMAT = 1


def cases_fingerprint(case_ids: Iterable[str]) -> str:
    """SHA-256 (first 16 hex digits) of the sorted case ids, one per line (UTF-8)."""
    text = "\n".join(sorted(str(case) for case in case_ids))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _container(node: Any) -> Any:
    """A plain (resolved) Python container of an OmegaConf node or mapping."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(node):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return json.loads(json.dumps(node, default=str)) if node is not None else None


@dataclass
class RunIdentity:
    """What identifies the experiment of one run folder (see the module doc).

    Attributes:
        fold: held-out fold, ``0 <= fold < num_folds``.
        num_folds: number of cross-validation folds.
        seed: global seed (split, crops, weights).
        data: ``name``, ``synthetic`` (generator settings key or None), ``raw_dir`` (absolute
            path or None), ``cases`` (fingerprint of the case list or None), ``num_cases``.
        model: the composed ``model`` config group (plain values).
        precision: ``name`` and ``policy`` of the ``precision`` group.
        mode: the mode of the job that created the folder.
        created: ISO 8601 UTC time of creation.
    """

    fold: int
    num_folds: int
    seed: int
    data: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    precision: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    created: str | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> RunIdentity:
        """The identity of the job described by a composed config (``fold``, ``data``, ...)."""
        data = cfg.get("data") or {}
        synthetic_key = None
        if _is_synthetic(data) and data.get("synthetic") is not None:
            settings = json.dumps(_container(data.synthetic), sort_keys=True, default=str)
            synthetic_key = hashlib.sha256(settings.encode("utf-8")).hexdigest()[:10]
        raw_dir = data.get("raw_dir")
        if raw_dir is not None and str(raw_dir) not in ("", "???"):
            raw_dir = str(Path(str(raw_dir)).expanduser().resolve())
        else:
            raw_dir = None
        precision = cfg.get("precision") or {}
        mode = cfg.get("mode") or {}
        return cls(
            fold=int(cfg.fold),
            num_folds=int(cfg.num_folds),
            seed=int(cfg.seed),
            data={"name": str(data.get("name")), "synthetic": synthetic_key, "raw_dir": raw_dir,
                  "cases": None, "num_cases": None},
            model=_container(cfg.get("model")) or {},
            precision={"name": precision.get("name"), "policy": precision.get("policy")},
            mode=mode.get("name") if hasattr(mode, "get") else None,
        )

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> RunIdentity:
        """Read a parsed ``run_identity.json``; KeyError/ValueError/TypeError when malformed."""
        return cls(
            fold=int(record["fold"]),
            num_folds=int(record["num_folds"]),
            seed=int(record["seed"]),
            data=dict(record.get("data") or {}),
            model=dict(record.get("model") or {}),
            precision=dict(record.get("precision") or {}),
            mode=record.get("mode"),
            created=record.get("created"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (see the module doc)."""
        return {"format": FORMAT, **asdict(self)}

    @property
    def run_name(self) -> str:
        """The name of the job's MLflow run: ``<mode>-fold<k>``."""
        return f"{self.mode}-fold{self.fold}"

    def tags(self) -> dict[str, str]:
        """The MLflow tags of the experiment: ``mode``, ``fold``, ``num_folds`` and
        ``precision`` (the ``precision`` option: ``auto``, ``amp``, ...)."""
        return {"mode": str(self.mode), "fold": str(self.fold),
                "num_folds": str(self.num_folds), "precision": str(self.precision.get("name"))}

    def write_result(self, run_dir: str | os.PathLike, status: str, overrides: Sequence[str],
                     metrics: Mapping[str, Any] | None = None, error: str | None = None,
                     mlflow_run_id: str | None = None) -> Path:
        """Write the job's ``results.json`` (its fold is this record's); see `write_job_result`."""
        return write_job_result(run_dir, status, self.fold, overrides, metrics, error,
                                mlflow_run_id)

    def write(self, run_dir: str | os.PathLike) -> Path:
        """Write ``<run_dir>/run_identity.json`` atomically (stamping ``created``)."""
        if self.created is None:
            self.created = datetime.now(UTC).isoformat(timespec="seconds")
        return write_json_atomic(Path(run_dir) / IDENTITY_FILE, self.to_dict())

    def differences(self, other: RunIdentity, cases: bool = True) -> list[str]:
        """Keys that identify the experiment and differ, as ``key <self> (now <other>)``.

        ``self`` is the recorded run, ``other`` the new job. ``data.cases`` is compared only
        with ``cases`` and when both sides know it.
        """
        found = []
        if (self.fold, self.num_folds) != (other.fold, other.num_folds):
            found.append(f"fold {self.fold} of {self.num_folds}, not fold {other.fold} of "
                         f"{other.num_folds}")
        if self.seed != other.seed:
            found.append(f"seed={self.seed} (now {other.seed})")
        keys = ["name", "synthetic"] + (["cases"] if cases else [])
        for key in keys:
            mine, theirs = self.data.get(key), other.data.get(key)
            if key == "cases" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                label = "case list fingerprint" if key == "cases" else f"data.{key}"
                found.append(f"{label} {mine} (now {theirs})")
        mine = _with_default_target(self.model)
        theirs = _with_default_target(other.model)
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                found.append(f"model.{key}={mine.get(key)!r} (now {theirs.get(key)!r})")
        return found


#: Keys the U-Net's group gained later, with the value that older runs were trained with.
_LATER_MODEL_KEYS = {"head": "softmax", "num_regions": 3}


def _with_default_target(model: dict[str, Any]) -> dict[str, Any]:
    """A model group as today's U-Net group spells it.

    Recorded before models were components: the U-Net; recorded before region heads: the
    softmax head (``num_regions`` then unused, 3 by default).
    """
    if not model:
        return model
    from unet3d.config import UNET3D_TARGET

    model = {**model} if "_target_" in model else {**model, "_target_": UNET3D_TARGET}
    if model["_target_"] == UNET3D_TARGET:
        for key, value in _LATER_MODEL_KEYS.items():
            model.setdefault(key, value)
    return model


def _is_synthetic(data: Any) -> bool:
    """Whether a ``data`` group is the synthetic data set (older runs: ``data.generate``)."""
    target = data.get("_target_")
    if target is None:
        return bool(data.get("generate", False))
    from unet3d.config import SYNTHETIC_DATASET_TARGET

    return target == SYNTHETIC_DATASET_TARGET


def read_identity(run_dir: str | os.PathLike) -> RunIdentity | None:
    """The identity recorded in ``run_dir``; else built from its ``.hydra/config.yaml``.

    Returns None when the folder has neither (not a run folder) or they cannot be read (a
    warning names the file).
    """
    run_dir = Path(run_dir)
    path = run_dir / IDENTITY_FILE
    if path.is_file():
        try:
            return RunIdentity.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("%s: unreadable run identity (%s)", path, error)
            return None
    config_path = run_dir / HYDRA_CONFIG
    if not config_path.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        config = OmegaConf.load(config_path)
        return RunIdentity.from_config(config)
    except Exception as error:  # noqa: BLE001 - a damaged legacy file only loses the record
        log.warning("%s: cannot read the run's config (%s)", config_path, error)
        return None


def record_cases(run_dir: str | os.PathLike, case_ids: Iterable[str],
                 convention: Mapping[str, Any] | None = None) -> RunIdentity | None:
    """Fill ``data.cases`` / ``data.num_cases`` (and ``data.convention``) once, if unset.

    Args:
        run_dir: the run folder.
        case_ids: the prepared data set's case ids.
        convention: the data set's ``LabelConvention.to_dict()``, or None.

    Returns:
        The (possibly updated) identity, or None when the folder has no identity file.
    """
    path = Path(run_dir) / IDENTITY_FILE
    if not path.is_file():
        return None
    identity = read_identity(run_dir)
    if identity is None:
        return None
    changed = False
    if identity.data.get("cases") is None:
        case_ids = list(case_ids)
        identity.data["cases"] = cases_fingerprint(case_ids)
        identity.data["num_cases"] = len(case_ids)
        changed = True
    if convention is not None and identity.data.get("convention") is None:
        identity.data["convention"] = json.loads(json.dumps(dict(convention)))
        changed = True
    if changed:
        identity.write(run_dir)
    return identity


def write_job_result(run_dir: str | os.PathLike, status: str, fold: int | None,
                     overrides: Sequence[str], metrics: Mapping[str, Any] | None = None,
                     error: str | None = None, mlflow_run_id: str | None = None,
                     **extra: Any) -> Path:
    """Write ``<run_dir>/results.json`` atomically and return its path (see the module doc).

    A job's result is written by its record (``RunIdentity.write_result``); a job without one
    fold (``mode=cross_validate``: ``fold`` None, its ``folds`` in ``extra``) calls this.

    Args:
        status: ``FINISHED``, ``FAILED`` or ``KILLED``.
        metrics: the job's final (evaluation) metrics, numbers only (non-finite values are
            stored as null).
        extra: more keys, stored as given (JSON-serialisable values).

    Raises:
        ValueError: another status.
    """
    status = str(status).upper()
    if status not in RESULT_STATUSES:
        raise ValueError(f"status: must be FINISHED, FAILED or KILLED, got {status!r}")
    record = {
        "status": status,
        "fold": None if fold is None else int(fold),
        "overrides": [str(item) for item in overrides],
        "metrics": {str(key): _json_number(value) for key, value in (metrics or {}).items()},
        "error": None if error is None else str(error),
        "mlflow_run_id": mlflow_run_id,
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **extra,
    }
    return write_json_atomic(Path(run_dir) / RESULTS_FILE, record)


def read_job_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The job's ``results.json`` as a dict, or None when it does not exist.

    Raises:
        OSError, ValueError: the file cannot be read or is not JSON.
    """
    path = Path(run_dir) / RESULTS_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _json_number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
