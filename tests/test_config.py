"""Config composition: every group composes, values are validated before any heavy work."""

from __future__ import annotations

import re
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
    assert (cfg.precision.name, cfg.precision.policy) == ("auto", "auto")
    assert cfg.num_folds == 5 and cfg.fold == 0


@pytest.mark.parametrize(
    "overrides",
    [
        ["precision=amp"], ["precision=bf16"], ["precision=fp16", "precision.xla=true"],
        ["precision=fp32"],
        ["precision=fp32", "precision.policy=auto", "+precision.min_speedup=1.2",
         "precision.reprobe=true"],
        ["device=cpu"], ["device=gpu"], ["device=mlu"],
        ["strategy=mirrored"], ["strategy=multi_worker"], ["strategy=horovod"],
        ["mode=train"], ["mode=benchmark"], ["model=unet3d", "data.crop_size=[128,128,128]"],
        ["debug=fast", "fold=4", "precision=amp", "mode=train"],
        ["model.norm=batch"], ["model.output_kernel_size=1"], ["model.norm=none"],
        ["model.norm=group", "model.base_filters=16"],
        ["loss.name=dice", "training.lr_schedule=constant"],
        ["mode=cross_validate", "mode.folds=[0,2]",
         "mode.fold_overrides=['hydra/launcher=joblib']"],
        ["training.deep_supervision=true", "training.deep_supervision_levels=2",
         "training.deep_supervision_weights=[0.7,0.3]"],
        ["data=brats2019", "data.raw_dir=/", "debug=fast"],
        ["inference=fast"], ["inference.engine=openvino", "inference.engine_threads=2"],
        ["mode=export", "checkpoint=/", "export.formats=[onnx]"],
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
        (["data.cache=sometimes"], "data.cache"),
        (["data=brats2019"], "data.raw_dir"),
        (["data=brats2019", "data.raw_dir=/no/such/folder"], "data.raw_dir"),
        (["training.max_steps=0"], "training.max_steps"),
        (["training.learning_rate=-1"], "training.learning_rate"),
        (["loss.name=focal"], "loss.name"),
        (["model.base_filters=16", "model.max_filters=8"], "model.max_filters"),
        (["inference.crop_margin=-2"], "inference.crop_margin"),
        (["inference.crop_to_brain=yes"], "inference.crop_to_brain"),
        (["inference.region_threshold=0"], "inference.region_threshold"),
        (["model.head=sigmoid"], "model.head"),
        (["mode=predict", "predict.checkpoint=/", "predict.fold=-1"], "predict.fold"),
        (["mode=cross_validate", "mode.folds=[0,5]"], "mode.folds"),
        (["mode=cross_validate", "mode.fold_mode=train"], "mode.fold_mode"),
        (["mode=cross_validate", "mode.fold_overrides=x"], "mode.fold_overrides"),
        (["mode=cross_validate", "training.max_steps=0"], "training.max_steps"),
        (["training.deep_supervision=true", "training.deep_supervision_weights=[1]"],
         "training.deep_supervision_weights"),
        (["training.deep_supervision=true", "training.deep_supervision_weights=[1,-1,0]"],
         "training.deep_supervision_weights"),
        (["training.deep_supervision=true", "training.deep_supervision_levels=4"],
         "training.deep_supervision_levels"),
        (["training.deep_supervision=true", "model.num_levels=2", "data.crop_size=[32,32,32]"],
         "training.deep_supervision"),
        (["precision=fp32", "precision.policy=auto"], "precision.min_speedup"),
        (["inference.overlap=1.0"], "inference.overlap"),
        (["model.norm=layer"], "model.norm"),
        (["model.num_classes=1"], "model.num_classes"),
        (["mode=evaluate"], "checkpoint"),
        (["mode=evaluate", "checkpoint=/no/such/ckpt"], "checkpoint"),
        (["mode=predict"], "predict.checkpoint"),
        (["data.synthetic.num_cases=3"], "data.synthetic.num_cases"),
        (["precision.policy=float16"], "precision.policy"),
        (["precision.min_speedup=0"], "precision.min_speedup"),
        (["precision.reprobe=maybe"], "precision.reprobe"),
        (["seed=-3"], "seed"),
        (["model._target_=nowhere.Net"], "model._target_"),
        (["loss._target_=unet3d.training.losses.Nowhere"], "loss._target_"),
        (["lr_schedule.warmup_steps=-1"], "lr_schedule.warmup_steps"),
        (["loss.num_classes=3"], "loss.num_classes"),
        (["data.synthetic.shape=[4,40,32]"], "data.synthetic.shape"),
        (["tracking.model_alias=champion"], "tracking.model_alias"),
        (["tracking.register_model=brats", "tracking.model_alias=v2"], "tracking.model_alias"),
        (["tracking.register_model=a/b"], "tracking.register_model"),
        (["inference.engine=tensorrt"], "inference.engine"),
        (["inference.engine_threads=0"], "inference.engine_threads"),
        (["mode=export"], "export.checkpoint"),
        (["mode=export", "checkpoint=/", "export.formats=[tflite]"], "export.formats"),
        (["mode=export", "checkpoint=/", "export.tolerance=-1"], "export.tolerance"),
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


def test_head_rules_between_head_loss_and_data_set() -> None:
    """unet3d.config.head_problem: the region head and the region loss go together."""
    from unet3d.config import REGION_LOSS_TARGET, SEGMENTATION_LOSS_TARGET, head_problem

    segmentation, regions = {"_target_": SEGMENTATION_LOSS_TARGET}, {"_target_": REGION_LOSS_TARGET}
    assert head_problem({"head": "softmax"}, segmentation) is None
    assert head_problem({"head": "regions"}, regions, num_painted_regions=3) is None
    assert head_problem({"head": "regions"}, segmentation).startswith("loss: model.head=regions")
    assert head_problem({"head": "softmax"}, regions).startswith("model.head: loss=regions")
    assert head_problem({"head": "sigmoid"}, segmentation).startswith("model.head: must be one")
    assert head_problem({"head": "regions", "num_regions": 3}, regions,
                        num_painted_regions=5).startswith("model.num_regions: the data set")
    with pytest.raises(ConfigError, match="^loss: model.head=regions"):
        validate(compose_config("model.head=regions"))


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
    from unet3d.config import data_problem
    from unet3d.data.layouts.convention import BRATS2023, LabelConvention

    model, loss = {"num_classes": 4}, {"_target_": "unet3d.training.losses.SegmentationLoss"}
    assert data_problem(model, loss, BRATS2023, 3) is None  # 0, 1, 2, 3: four classes
    post = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                              4: "RC"}, {"RC": (4,)})
    problem = data_problem(model, loss, post, 4)
    assert re.match(r"^model.num_classes: .*brats2024_post has 5 classes.*model.num_classes=5$",
                    problem), problem
    regions = {"num_classes": 4, "head": "regions", "num_regions": 3}
    assert data_problem(regions, {"_target_": "unet3d.training.region_loss.RegionLoss"},
                        BRATS2023, 2).startswith("model.num_regions: the data set paints 2")


# ---- data.augmentation (conf/augmentation/) -----------------------------------------------------

DATA_OPTIONS = sorted(path.stem for path in (CONF / "data").glob("*.yaml"))


@pytest.mark.parametrize("data", DATA_OPTIONS)
@pytest.mark.parametrize("augmentation", ["reference", "nnunet"])
def test_every_data_set_composes_with_every_augmentation(data: str, augmentation: str) -> None:
    from unet3d.data.augment.compose import Augmentation

    raw = [] if data.startswith("synthetic") else ["data.raw_dir=/"]
    for extra in ([], ["debug=fast"]):
        cfg = compose_config(f"data={data}", f"augmentation={augmentation}", *raw, *extra)
        validate(cfg)
        assert cfg.data.name and cfg.data.augmentation.name == augmentation
        assert Augmentation.from_config(cfg.data.augmentation).name == augmentation


def test_the_default_augmentation_is_the_reference_recipe_of_the_pipeline() -> None:
    """conf/augmentation/reference.yaml and the pipeline's default (REFERENCE) agree."""
    from unet3d.config import DATA_PIPELINE_KEYS
    from unet3d.data.augment.compose import NNUNET_TRANSFORMS, Augmentation
    from unet3d.data.pipeline import REFERENCE

    cfg = compose_config()
    composed = Augmentation.from_config(cfg.data.augmentation)
    assert cfg.data.augment is True and composed.name == "reference"
    assert not composed.uses_nnunet_transforms
    for field in ("mirror_probability", "mirror_axes", "intensity_scale"):
        assert getattr(composed, field) == getattr(REFERENCE, field)
    assert all(getattr(REFERENCE, name).probability == 0.0 for name in NNUNET_TRANSFORMS)
    assert "augmentation" in DATA_PIPELINE_KEYS  # never passed to the data set's _target_
    nnunet = Augmentation.from_config(compose_config("augmentation=nnunet").data.augmentation)
    assert nnunet.uses_nnunet_transforms and nnunet.mirror_probability == 0.5


@pytest.mark.parametrize(
    ("override", "key", "message"),
    [
        ("data.augmentation.rotation.probability=1.5", "data.augmentation.rotation.probability",
         "must be in [0, 1], got 1.5"),
        ("data.augmentation.scaling.range=[1.4,0.7]", "data.augmentation.scaling.range",
         "low must be <= high"),
        ("data.augmentation.scaling.range=[0,1.4]", "data.augmentation.scaling.range",
         "low must be > 0"),
        ("data.augmentation.rotation.angle=[-30,200]", "data.augmentation.rotation.angle",
         "high must be <= 180"),
        ("data.augmentation.mirror.axes=[0,3]", "data.augmentation.mirror.axes",
         "must be a list of values from 0, 1, 2"),
        ("data.augmentation.mirror.axes=[1,1]", "data.augmentation.mirror.axes",
         "every value at most once"),
        ("data.augmentation.low_resolution.zoom=[0.5,1.5]", "data.augmentation.low_resolution.zoom",
         "high must be <= 1"),
        ("data.augmentation.blur.channel_probability=-0.1",
         "data.augmentation.blur.channel_probability", "must be in [0, 1]"),
        ("data.augmentation.noise.std=0.1", "data.augmentation.noise.std",
         "must be [low, high] (2 numbers)"),
        ("data.augmentation.gamma.probability=often", "data.augmentation.gamma.probability",
         "must be a number"),
        ("+data.augmentation.rotation.angel=[0,1]", "data.augmentation.rotation.angel",
         "unknown key; rotation has angle, probability"),
        ("+data.augmentation.mixup={probability:1}", "data.augmentation.mixup",
         "unknown transform"),
    ],
)
def test_bad_augmentation_values_name_their_key(override: str, key: str, message: str) -> None:
    cfg = compose_config("augmentation=nnunet", override)
    with pytest.raises(ConfigError) as raised:
        validate(cfg)
    text = str(raised.value)
    assert text.startswith(f"{key}: ") and message in text, text
    assert "\n" not in text


def test_cli_rejects_a_bad_augmentation_value_with_one_line(tmp_path: Path) -> None:
    result = _run_cli("augmentation=nnunet", "data.augmentation.rotation.probability=1.5",
                      cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() + result.stdout.splitlines()
              if "ERROR" in line]
    assert len(errors) == 1
    assert errors[0].endswith("data.augmentation.rotation.probability: must be in [0, 1], got 1.5")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "data").exists()
