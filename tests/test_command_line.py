"""The command line answers at once: ``--help``, ``--cfg job`` and shell completion import
nothing of a job, and Hydra builds its config repository once per answer (the answers stay
Hydra's own). How fast they answer is measured, never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.types import RunMode
from omegaconf import OmegaConf

from unet3d.config import CONFIG_DIR
from unet3d.config.command_line import answers_at_once, share_config_repositories
from unet3d.runs.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
#: Modules that only a job needs: none of them is imported to answer.
JOB_MODULES = ("tensorflow", "keras", "mlflow", "numpy", "unet3d.runner", "unet3d.modes",
               "unet3d.runtime.devices")


def test_only_answering_command_lines_share_repositories() -> None:
    assert not answers_at_once(["fold=2", "mode=train"])
    assert not answers_at_once(["--multirun", "fold=0,1", "hydra.job.chdir=false"])
    assert answers_at_once(["--cfg", "job", "precision=amp"])


def test_shared_repositories_give_hydras_own_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Group listings and the composed config, with and without the shared repository."""
    register_resolvers()
    monkeypatch.setattr(ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo",
                        ConfigLoaderImpl._parse_overrides_and_create_caching_repo)
    overrides = ["precision=amp", "model=unet3d"]

    def answers(loader: ConfigLoaderImpl) -> tuple:
        groups = {}
        for group in ("", "precision", "debug", "hydra", "hydra/launcher", "model"):
            for kind in (ObjectType.CONFIG, ObjectType.GROUP):
                groups[group, kind] = loader.get_group_options(group, kind, "config", overrides)
        composed = loader.load_configuration("config", overrides, RunMode.RUN)
        return groups, OmegaConf.to_container(composed.model), composed.precision.name

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        plain = answers(loader)
        assert share_config_repositories() and share_config_repositories()
        shared, again = answers(loader), answers(loader)
    assert plain == shared == again
    groups, model, precision = shared
    assert "amp" in groups["precision", ObjectType.CONFIG]
    assert "data" in groups["", ObjectType.GROUP]
    assert model["base_filters"] == 32 and precision == "amp"


@pytest.mark.parametrize("arguments", [["--help"], ["--cfg", "job", "precision=amp"]])
def test_answers_import_nothing_of_a_job(arguments: list[str]) -> None:
    code = ("import atexit, sys; atexit.register(lambda: print('IMPORTED', sorted(m for m in "
            f"sys.modules if m.startswith({JOB_MODULES!r})))); from unet3d.run import cli; "
            "sys.argv = ['unet3d', *sys.argv[1:]]; cli()")
    result = subprocess.run([sys.executable, "-c", code, *arguments], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip().splitlines()[-1] == "IMPORTED []"
