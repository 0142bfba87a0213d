"""The OmegaConf resolvers of ``conf/``: how a run folder is named.

``conf/hydra/default.yaml`` names a job's folder ``outputs/<date>/<time>_<mode>_fold<k>_<id>``
and a sweep's ``outputs/multirun/<date>/<time>_<id>/<n>_<overrides>``:

- ``${launch:FORMAT}``: the launch time, the shared-clock twin of Hydra's ``${now:FORMAT}``:
  ``UNET3D_LAUNCH_TIME`` (``YYYY-mm-dd_HH-MM-SS``) when exported (every rank of a
  multi-process launch agrees on it, :mod:`unet3d.runtime.launch`), else this process's clock;
- ``${launch_id:}``: a short id of this launch, the folder name's suffix: ``UNET3D_LAUNCH_ID``
  when exported, else 6 random hex digits (two jobs started in the same second by different
  processes get different folders);
- ``${unet3d_job_dirname:...}``: a sweep job's folder name (:func:`unet3d.runs.naming.job_dirname`);
- ``${abspath:PATH}``: PATH made absolute against the working folder, for values resolved before
  Hydra sets its config (the sweeper's, e.g. the Optuna study's storage), where
  ``${hydra:runtime.cwd}`` cannot be used.

A malformed exported value stops the command with one line naming the variable.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import datetime

from omegaconf import OmegaConf

from unet3d.runs.naming import RESOLVER_NAME, job_dirname

#: Environment variable holding the launch time that every process of one job shares.
LAUNCH_TIME_VARIABLE = "UNET3D_LAUNCH_TIME"
#: Environment variable holding the launch id (run folder suffix) every process shares.
LAUNCH_ID_VARIABLE = "UNET3D_LAUNCH_ID"
#: Format of ``UNET3D_LAUNCH_TIME``.
LAUNCH_TIME_FORMAT = "%Y-%m-%d_%H-%M-%S"
#: Hex digits of a launch id.
LAUNCH_ID_LENGTH = 6
_LAUNCH_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")

_started: datetime | None = None
_launch_id_value: str | None = None


def launch_time() -> datetime:
    """This launch's time (see the module doc), read once.

    Raises:
        SystemExit: ``UNET3D_LAUNCH_TIME`` is not ``YYYY-mm-dd_HH-MM-SS``.
    """
    global _started
    if _started is None:
        shared = os.environ.get(LAUNCH_TIME_VARIABLE)
        if not shared:
            _started = datetime.now()
        else:
            try:
                _started = datetime.strptime(shared, LAUNCH_TIME_FORMAT)
            except ValueError:
                raise SystemExit(f"{LAUNCH_TIME_VARIABLE}: expected format "
                                 f"YYYY-mm-dd_HH-MM-SS, got {shared!r}") from None
    return _started


def launch_id() -> str:
    """This launch's id (see the module doc), read once.

    Raises:
        SystemExit: ``UNET3D_LAUNCH_ID`` is not 1-32 letters, digits, ``-`` or ``_``.
    """
    global _launch_id_value
    if _launch_id_value is None:
        shared = os.environ.get(LAUNCH_ID_VARIABLE)
        if shared and not _LAUNCH_ID_PATTERN.fullmatch(shared):
            raise SystemExit(f"{LAUNCH_ID_VARIABLE}: expected 1-32 letters, digits, '-' or "
                             f"'_', got {shared!r}")
        _launch_id_value = shared or secrets.token_hex(LAUNCH_ID_LENGTH // 2)
    return _launch_id_value


def register_resolvers() -> None:
    """Register the resolvers of conf/ (idempotent; ``unet3d.run`` and the tests call it)."""
    resolvers = {
        "launch": (lambda time_format: launch_time().strftime(time_format), True),
        "launch_id": (launch_id, True),
        "abspath": (lambda path: os.path.abspath(str(path)), False),
        RESOLVER_NAME: (job_dirname, False),
    }
    for name, (resolver, cached) in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver, use_cache=cached)
