"""Config composition: every group composes, values are validated before any heavy work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from unet3d.config import validate
from unet3d.errors import ConfigError
from unet3d.run import register_resolvers

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_config(*overrides: str):
    """Compose conf/ like `python -m unet3d.run` does, with Hydra's own config resolved."""
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def test_default_config_is_valid() -> None:
    cfg = compose_config()
    validate(cfg)
    assert cfg.mode.name == "train_and_evaluate"
    assert cfg.data.name == "synthetic"
    assert cfg.device.type == "auto"
    assert cfg.precision.name == "fp32"
    assert cfg.num_folds == 5 and cfg.fold == 0


@pytest.mark.parametrize(
    "overrides",
    [
        ["precision=amp"], ["precision=bf16"], ["precision=fp16", "precision.xla=true"],
        ["device=cpu"], ["device=gpu"], ["device=mlu"],
        ["strategy=mirrored"], ["strategy=multi_worker"], ["strategy=horovod"],
        ["mode=train"], ["mode=benchmark"], ["model=unet3d", "data.crop_size=[128,128,128]"],
        ["debug=fast", "fold=4", "precision=amp", "mode=train"],
        ["model.norm=batch"], ["model.output_kernel_size=1"], ["model.norm=none"],
        ["model.norm=group", "model.base_filters=16"],
        ["training.loss=dice", "training.lr_schedule=constant"],
        ["data=brats2019", "data.raw_dir=/", "debug=fast"],
    ],
)
def test_groups_compose_and_validate(overrides: list[str]) -> None:
    validate(compose_config(*overrides))


def test_debug_preset_shrinks_everything() -> None:
    cfg = compose_config("debug=fast")
    assert cfg.data.synthetic.num_cases < 40
    assert list(cfg.data.crop_size) == [32, 32, 32]
    assert cfg.training.max_steps < 20
    assert cfg.model.base_filters < 8


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["fold=7"], "fold"),
        (["fold=-1"], "fold"),
        (["num_folds=1"], "num_folds"),
        (["data.batch_size=-2"], "data.batch_size"),
        (["data.crop_size=[60,64,64]"], "data.crop_size"),
        (["data.crop_size=[64,64]"], "data.crop_size"),
        (["data=brats2019"], "data.raw_dir"),
        (["data=brats2019", "data.raw_dir=/no/such/folder"], "data.raw_dir"),
        (["training.max_steps=0"], "training.max_steps"),
        (["training.learning_rate=-1"], "training.learning_rate"),
        (["training.loss=focal"], "training.loss"),
        (["inference.overlap=1.0"], "inference.overlap"),
        (["model.norm=layer"], "model.norm"),
        (["model.num_classes=1"], "model.num_classes"),
        (["mode=evaluate"], "checkpoint"),
        (["mode=evaluate", "checkpoint=/no/such/ckpt"], "checkpoint"),
        (["mode=predict"], "predict.checkpoint"),
        (["data.synthetic.num_cases=3"], "data.synthetic.num_cases"),
        (["precision.policy=float16"], "precision.policy"),
        (["seed=-3"], "seed"),
        (["model._target_=nowhere.Net"], "model._target_"),
        (["loss._target_=unet3d.training.losses.Nowhere"], "loss._target_"),
        (["lr_schedule.warmup_steps=-1"], "lr_schedule.warmup_steps"),
        (["loss.num_classes=3"], "loss.num_classes"),
        (["data.synthetic.shape=[4,40,32]"], "data.synthetic.shape"),
    ],
)
def test_bad_values_name_their_key(overrides: list[str], key: str) -> None:
    cfg = compose_config(*overrides)
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    message = str(raised.value)
    assert message.startswith(f"{key}:"), message
    assert "\n" not in message


def test_every_list_of_allowed_values_has_one_home() -> None:
    """The modules use the vocabularies of unet3d.config, they do not define their own."""
    import unet3d.config as config
    from unet3d.model import unet3d as unet
    from unet3d.training import losses, optimizer

    assert unet.NORMS is config.NORMS and losses.LOSSES is config.LOSSES
    assert optimizer.LR_SCHEDULES is config.LR_SCHEDULES
    cfg = compose_config()
    assert cfg.model._target_ == config.UNET3D_TARGET
    assert cfg.loss._target_ == config.SEGMENTATION_LOSS_TARGET
    assert cfg.lr_schedule._target_ == config.LR_SCHEDULE_TARGET
    assert cfg.data._target_ == config.SYNTHETIC_DATASET_TARGET
    assert compose_config("data=brats2019").data._target_ == config.BRATS_FOLDER_TARGET


def test_groups_resolve_without_tensorflow() -> None:
    """Composing and validating must not import TensorFlow (instant --help and errors)."""
    code = (
        "import sys; from tests.test_config import compose_config; from unet3d.config import "
        "validate; validate(compose_config()); print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "False"


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unet3d.run", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_rejects_out_of_range_fold_with_one_line(tmp_path: Path) -> None:
    result = _run_cli("fold=7", cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
              if "ERROR" in line]
    assert len(errors) == 1 and "fold: must be in [0, num_folds=5), got 7" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()


def test_cli_unknown_option_gets_hydra_error(tmp_path: Path) -> None:
    result = _run_cli("precision=fp64", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'precision/fp64'" in result.stderr


def test_cli_help_and_cfg_job(tmp_path: Path) -> None:
    help_text = _run_cli("--help", cwd=tmp_path)
    assert help_text.returncode == 0
    for group in ("precision", "device", "mode", "strategy", "data", "model", "debug"):
        assert f"{group}:" in help_text.stdout
    job = _run_cli("--cfg", "job", "precision=amp", "fold=3", cwd=tmp_path)
    assert job.returncode == 0
    loaded = OmegaConf.create(job.stdout)
    assert loaded.precision.name == "amp" and loaded.fold == 3


def test_shell_completion_of_the_console_script(tmp_path: Path) -> None:
    """`eval "$(unet3d -sc install=bash)"` completes groups, options and keys from any folder."""
    import os
    import shutil

    executable = shutil.which("unet3d") or str(Path(sys.executable).parent / "unet3d")
    if not Path(executable).exists():
        pytest.skip("the unet3d console script is not installed (pip install -e .)")

    def query(line: str) -> str:
        environment = {**os.environ, "COMP_LINE": line}
        result = subprocess.run([executable, "-sc", "query=bash"], cwd=tmp_path, env=environment,
                                capture_output=True, text=True, timeout=60, check=True)
        return result.stdout

    assert "precision=" in query("unet3d prec").split()
    assert "precision=amp" in query("unet3d precision=").split()
    assert "training.max_steps=" in query("unet3d training.max").split()
    install = subprocess.run([executable, "-sc", "install=bash"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60, check=True)
    assert "complete" in install.stdout


def test_num_classes_must_be_the_data_sets():
    from omegaconf import OmegaConf

    from unet3d.data.convention import BRATS2023, LabelConvention
    from unet3d.errors import ConfigError
    from unet3d.runner import check_num_classes

    cfg = OmegaConf.create({"model": {"num_classes": 4}})
    check_num_classes(cfg, BRATS2023)  # 0, 1, 2, 3: four classes
    post = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                              4: "RC"}, {"RC": (4,)})
    with pytest.raises(ConfigError, match=r"^model.num_classes: .*brats2024_post has 5 classes.*"
                                          r"model.num_classes=5$"):
        check_num_classes(cfg, post)
