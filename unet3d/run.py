"""The task runner's command line: ``python -m unet3d.run [group=option ...] [key=value ...]``.

Hydra composes ``conf/`` into one config and :func:`unet3d.runner.run_job` runs it: claims the
run folder, validates the config before TensorFlow is imported, runs the mode, and turns errors
into one ERROR line and an exit status. ``--help``, ``--cfg job`` and shell completion import
nothing of the job (:mod:`unet3d.config.command_line`).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from unet3d.config import CONFIG_DIR
from unet3d.runs.resolvers import register_resolvers

register_resolvers()

log = logging.getLogger(__name__)

#: Set by ``mode=cross_validate`` for its fold sweep: that sweep's stop is not the user's
#: ERROR line (its parent, the trial's sweep, logs it).
NESTED_SWEEP_VARIABLE = "UNET3D_NESTED_SWEEP"


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    """One job: its metrics, or the sweeper's objective (see ``unet3d.runner``)."""
    from unet3d.runner import run_job  # imports TensorFlow only when the job needs it

    return run_job(cfg)


def cli() -> None:
    """Console entry point (``unet3d ...``), the same as ``python -m unet3d.run``.

    A ``--multirun`` stopped by Ctrl-C or SIGTERM (a single job handles its own in
    ``unet3d.runner.run_job``) runs the sweep's stop hooks
    (``unet3d.runtime.signals.run_stop_hooks``: Optuna trials told FAIL, MLflow runs KILLED)
    and ends with one ERROR line and status 130 or 143, no traceback.
    """
    from unet3d.config.command_line import answers_at_once

    if not answers_at_once(sys.argv[1:]):
        from unet3d.runtime.launch import prepare_launch

        prepare_launch()
    try:
        main()
    except KeyboardInterrupt as error:
        from unet3d.runner import EXIT_INTERRUPTED, EXIT_TERMINATED
        from unet3d.runtime.signals import TerminationRequested, run_stop_hooks

        done = run_stop_hooks()
        terminated = isinstance(error, TerminationRequested)
        nested = bool(os.environ.get(NESTED_SWEEP_VARIABLE))
        log.log(logging.WARNING if nested else logging.ERROR, "%s stopped: %s%s",
                "fold sweep" if nested else "sweep",
                error if terminated else "interrupted (Ctrl-C)",
                "".join(f"; {phrase}" for phrase in done))
        sys.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


if __name__ == "__main__":
    cli()
