"""The task runner's command line: ``python -m unet3d.run [group=option ...] [key=value ...]``.

Hydra composes ``conf/`` into one config and :func:`unet3d.runner.run_job` runs it: claims the
run folder, validates the config before TensorFlow is imported, runs the mode, and turns errors
into one ERROR line and an exit status. ``--help``, ``--cfg job`` and shell completion import
nothing of the job (:mod:`unet3d.config.command_line`).
"""

from __future__ import annotations

import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from unet3d.config import CONFIG_DIR
from unet3d.runs.resolvers import register_resolvers

register_resolvers()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> Any:
    """One job: its metrics, or the sweeper's objective (see ``unet3d.runner``)."""
    from unet3d.runner import run_job  # imports TensorFlow only when the job needs it

    return run_job(cfg)


def cli() -> None:
    """Console entry point (``unet3d ...``), the same as ``python -m unet3d.run``."""
    from unet3d.config.command_line import answers_at_once

    if not answers_at_once(sys.argv[1:]):
        from unet3d.runtime.launch import prepare_launch

        prepare_launch()
    main()


if __name__ == "__main__":
    cli()
