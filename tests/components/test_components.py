"""Components from config: a user's model, loss, schedule and data set plugged in with
``hydra.searchpath``, and every broken contract reported as one line naming ``_target_``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from tests.test_config import compose_config
from unet3d.config import validate
from unet3d.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
#: The user's config dir, added to Hydra's search path like a user would.
SEARCHPATH = f"hydra.searchpath=[file://{Path(__file__).resolve().parent / 'conf'}]"
CUSTOM = "tests.components.custom"


def custom_config(*overrides: str):
    return compose_config(SEARCHPATH, *overrides)


def test_user_components_compose_validate_and_build() -> None:
    from unet3d.model.build import build_model_from_config
    from unet3d.training.losses import build_loss
    from unet3d.training.optimizer import (
        build_lr_schedule,
        build_optimizer,
        current_learning_rate,
    )

    cfg = custom_config("model=tiny_net", "loss=weighted_ce", "lr_schedule=step", "debug=fast")
    validate(cfg)
    assert cfg.model._target_ == f"{CUSTOM}.tiny_net" and cfg.model.width == 4
    assert "base_filters" not in cfg.model  # debug=fast shrinks the U-Nets only
    model = build_model_from_config(cfg.model)
    assert model.name == "tiny_net" and model.output_shape == (None, None, None, None, 4)
    labels = np.zeros((1, 4, 4, 4), np.int32)
    total, parts = build_loss(cfg.loss, 4)(labels, model(np.ones((1, 4, 4, 4, 4), np.float32)))
    assert total.shape == (1,) and set(parts) == {"weighted_ce"}
    assert current_learning_rate(build_optimizer(cfg.lr_schedule, 6)) == pytest.approx(1e-3)
    assert float(build_lr_schedule(cfg.lr_schedule, 6)(5)) == pytest.approx(1e-4)


def test_user_data_set(tmp_path: Path) -> None:
    from unet3d.data.prepare import prepare_data
    from unet3d.data.synthetic.generate import generate_dataset

    generate_dataset(tmp_path / "source", num_cases=3, shape=[16, 16, 16],
                     spacing=[1.0, 1.0, 1.0], seed=1)
    cfg = custom_config("data=copied", f"data.source_dir={tmp_path / 'source'}",
                        "data.num_cases=2", "num_folds=2", f"paths.data_dir={tmp_path / 'cache'}")
    validate(cfg)
    prepared = prepare_data(cfg)
    assert prepared.raw_dir == tmp_path / "cache" / "copied-2"
    assert len(prepared.case_ids) == 2 and prepared.preprocessed_dir.name.startswith("copied-")


def test_the_subclassed_model_is_built_by_the_probe() -> None:
    from unet3d.model.build import build_model_from_config

    model = build_model_from_config({"_target_": f"{CUSTOM}.TinySubclassNet", "name": "sub",
                                     "in_channels": 4, "num_classes": 4, "width": 2})
    assert model.built and model.count_params() == 27 * 4 * 2 + 2 + 2 * 4 + 4


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("broken_channels_net", r"output has 3 channels .*model\.num_classes is 4"),
        ("broken_rank_net", r"output has shape \(None, 4\) \(rank 2\); expected rank 5"),
        ("broken_not_a_model", r"returned a Dense, not a keras\.Model"),
        ("broken_logits_net", r"outputs no probabilities"),
        ("broken_failing_net", r"broken_failing_net\(\.\.\.\) failed: RuntimeError: out of"),
        ("nowhere_net", r"tests\.components\.custom has no attribute 'nowhere_net'"),
    ],
)
def test_a_model_that_breaks_the_contract_is_one_line(target: str, message: str) -> None:
    from unet3d.model.build import build_model_from_config

    group = {"_target_": f"{CUSTOM}.{target}", "name": "x", "in_channels": 4, "num_classes": 4}
    with pytest.raises(ConfigError, match=rf"^model\._target_: .*{message}") as raised:
        build_model_from_config(group)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("BrokenScalarLoss", r"total has shape \(\); expected one value per sample, \(2,\)"),
        ("BrokenArgmaxLoss", r"total has no gradient with respect to the probabilities"),
        ("BrokenNoFolder", r"returned a BrokenNoFolder, not a callable"),
    ],
)
def test_a_loss_that_breaks_the_contract_is_one_line(target: str, message: str) -> None:
    from unet3d.training.losses import build_loss

    with pytest.raises(ConfigError, match=rf"^loss\._target_: {CUSTOM}\.{target} {message}"):
        build_loss({"_target_": f"{CUSTOM}.{target}"}, num_classes=4)


def test_a_schedule_and_a_data_set_that_break_the_contract() -> None:
    from unet3d.data.datasets import build_dataset
    from unet3d.training.optimizer import build_optimizer

    with pytest.raises(ConfigError, match=r"^lr_schedule\._target_: .* returned the rate -0\.1"):
        build_optimizer({"_target_": f"{CUSTOM}.broken_schedule", "learning_rate": 0.1}, 10)
    with pytest.raises(ConfigError, match=r"^data\._target_: .* without a cases_dir"):
        build_dataset(OmegaConf.create({"_target_": f"{CUSTOM}.BrokenNoFolder", "name": "x"}))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model._target_=nowhere.net"], r"^model\._target_: cannot import 'nowhere\.net': no "
                                         r"module named 'nowhere'"),
        ([f"model._target_={CUSTOM}.nowhere"], r"^model\._target_: .*custom\.py\) has no "
                                               r"'nowhere'"),
        (["loss._target_=unet3d.training.lossez.Loss"], r"^loss\._target_: .*package "
                                                        r"unet3d\.training .* has no 'lossez'"),
        (["model._target_=tiny_net"], r"^model\._target_: must be a dotted import path"),
    ],
)
def test_a_target_that_does_not_import_fails_validation(overrides: list[str],
                                                        message: str) -> None:
    cfg = custom_config("model=tiny_net", *overrides)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


def test_validation_runs_no_user_code_and_no_tensorflow() -> None:
    code = (
        "import sys; from tests.components.test_components import custom_config; "
        "from unet3d.config import validate; "
        "validate(custom_config('model=tiny_net', 'loss=weighted_ce', 'lr_schedule=step')); "
        "print(sorted(m for m in ('tensorflow', 'keras', 'tests.components.custom') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"


def test_a_wrong_target_stops_the_cli_at_start_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unet3d.run", SEARCHPATH, "model=tiny_net",
         f"model._target_={CUSTOM}.tiny_nett"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "ERROR" in line]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert "model._target_: cannot import 'tests.components.custom.tiny_nett'" in errors[0]
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow.db").exists()
