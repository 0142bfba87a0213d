"""The modes of ``python -m unet3d.run``: ``mode=<name>`` runs ``unet3d.modes.<name>.run(job)``.

One module per mode (``benchmark``: a package), beside its config ``conf/mode/<name>.yaml``
(``mode.name`` and the mode's own keys): ``train``, ``evaluate``, ``train_and_evaluate``,
``predict``, ``benchmark``, ``postprocess`` (rules chosen on a sweep's out-of-fold predictions)
and ``cross_validate`` (every fold of a K-fold sweep in one job: an Optuna trial;
``unet3d.runner.run_job`` runs it without a runtime of its own). A mode receives a
``unet3d.modes.job.Job`` (config, runtime, tracker, run folder) and returns its final metrics;
the runner (``unet3d.runner``) sets up the runtime and tracking around it. Modules are
imported when their mode runs. No mode imports another (``tests/test_layers.py``): what modes
share lives in ``job.py``, ``build.py`` and ``steps.py``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def mode_function(name: str) -> Callable[[Any], dict[str, float]]:
    """``run(job) -> metrics`` of mode ``name`` (one of ``unet3d.config.MODES``, checked by
    the config)."""
    return importlib.import_module(f"unet3d.modes.{name}").run
