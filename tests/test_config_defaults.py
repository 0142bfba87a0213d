"""One home per default: what is built from config gets every argument from conf/.

Every option of every config group is composed (real Hydra composition of conf/) and
validated; then every constructor the framework builds from that config must receive each of
its parameters from the config (none left to a code default, which could contradict the
YAML), and take no key it does not know.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.test_config import CONF, compose_config
from unet3d.config import DATA_PIPELINE_KEYS, UNET3D_TARGET, validate
from unet3d.config.components import locate
from unet3d.errors import ConfigError

#: Every option of every group of conf/ (Hydra's own groups and the debug/ sub-options, which
#: debug=fast composes, aside).
OPTIONS = sorted(f"{path.parent.name}={path.stem}" for path in CONF.glob("*/*.yaml")
                 if path.parent.name not in ("hydra", "debug")) + ["debug=fast"]

#: What an option needs beside it to be valid.
COMPANIONS = {"loss=regions": ["model.head=regions"],
              "mode=score": ["score.predictions=/", "score.references=/"],
              "mode=export": ["export.checkpoint=/"],
              # the reference U-Net's 6 levels need sides divisible by 32 (default data: 56)
              "model=unet3d": ["data.crop_size=[64,64,64]"]}
#: The framework's arguments of each component group (``unet3d.config.components.instantiate``'s
#: runtime arguments), and the keys of a group that are not arguments (the data group's pipeline
#: and layout keys).
RUNTIME_ARGUMENTS = {"lr_schedule": {"total_steps"}}
NOT_ARGUMENTS = {"data": set(DATA_PIPELINE_KEYS)}
#: Parameters of a built-in component that are an API option, not a setting.
NOT_SETTINGS = {UNET3D_TARGET: {"input_shape"}}


def _composed(option: str) -> Any:
    """The config of ``option``, with the values a user must give filled in (a folder)."""
    cfg = compose_config(option, *COMPANIONS.get(option, []))
    OmegaConf.set_struct(cfg, False)
    if OmegaConf.is_missing(cfg.data, "raw_dir"):
        cfg.data.raw_dir = "/"
    for key in ("checkpoint", "resume_dir"):
        if key in cfg and (OmegaConf.is_missing(cfg, key) or cfg[key] is None):
            cfg[key] = "/"
    return cfg


def _parameters(target: Any) -> tuple[set[str], bool]:
    """The named parameters of a class's ``__init__`` or a factory; whether it takes **kwargs."""
    function = target.__init__ if inspect.isclass(target) else target
    parameters = list(inspect.signature(function).parameters.values())
    if inspect.isclass(target):
        parameters = parameters[1:]  # self
    named = {p.name for p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return named, any(p.kind is p.VAR_KEYWORD for p in parameters)


def test_every_group_option_is_listed() -> None:
    groups = {option.split("=")[0] for option in OPTIONS}
    assert {"data", "model", "loss", "lr_schedule", "inference", "precision", "mode",
            "training", "experiment"} <= groups


@pytest.mark.parametrize("option", OPTIONS)
def test_components_get_every_argument_from_the_config(option: str) -> None:
    cfg = _composed(option)
    validate(cfg)
    for group in ("model", "loss", "lr_schedule", "data"):
        node = OmegaConf.to_container(cfg[group], resolve=True)
        target_name = node.pop("_target_")
        given = (set(node) - NOT_ARGUMENTS.get(group, set())) | RUNTIME_ARGUMENTS.get(group, set())
        parameters, any_keyword = _parameters(locate(target_name, f"{group}._target_"))
        left = parameters - given - NOT_SETTINGS.get(target_name, set())
        assert not left, f"{option}: {target_name} gets {sorted(left)} from no key of {group}"
        unknown = given - parameters
        assert any_keyword or not unknown, f"{option}: {group} keys {sorted(unknown)} are no " \
                                           f"arguments of {target_name}"


class _Built(Exception):
    """Stops a constructor once its arguments are recorded."""


@pytest.mark.parametrize("option", ["inference=default", "inference=fast", "debug=fast",
                                    "experiment=brats2019_reference", "experiment=brats_winner"])
def test_the_predictor_gets_every_argument_from_the_inference_group(
        option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from unet3d.inference.ensemble import EnsemblePredictor

    cfg = _composed(option)
    received: dict[str, Any] = {}

    def record(self: Any, models: Any, **arguments: Any) -> None:
        received.update(arguments)
        raise _Built

    parameters, _ = _parameters(EnsemblePredictor)
    assert all(parameter.default is inspect.Parameter.empty for parameter in
               inspect.signature(EnsemblePredictor.__init__).parameters.values())
    monkeypatch.setattr(EnsemblePredictor, "__init__", record)
    with pytest.raises(_Built):
        EnsemblePredictor.from_config([], cfg.inference, crop_size=cfg.data.crop_size,
                                      num_classes=4, jit_compile=False, background_class=0,
                                      input_divisor=8)
    assert set(received) == parameters - {"models"}
    inference = cfg.inference
    for key in ("overlap", "blend", "batch_size", "tta", "crop_to_brain", "crop_margin",
                "single_window"):
        assert received[key] == inference[key], key
    assert list(received["window_size"]) == list(inference.window_size or cfg.data.crop_size)


def test_no_code_default_in_the_builders_of_the_conf_components() -> None:
    """The built-in components take no default that a YAML key gives (one home per default)."""
    for path in sorted(CONF.glob("*/*.yaml")):
        node = OmegaConf.load(path)
        target = node.get("_target_") if OmegaConf.is_dict(node) else None
        if not isinstance(target, str) or not target.startswith("unet3d."):
            continue
        function = locate(target, "_target_")
        function = function.__init__ if inspect.isclass(function) else function
        defaults = {p.name for p in inspect.signature(function).parameters.values()
                    if p.default is not inspect.Parameter.empty}
        given = set(node) - {"_target_", "defaults"}
        assert not defaults & given, f"{Path(path).relative_to(CONF)}: {target} has code " \
                                     f"defaults for {sorted(defaults & given)}"


def test_the_reference_model_on_the_default_crops_is_one_line_with_the_fix() -> None:
    # data=synthetic_quick's (the default) 56^3 crops suit the small U-Net, not the reference.
    cfg = compose_config("model=unet3d")
    with pytest.raises(ConfigError, match=r"^data\.crop_size: every side must be an integer "
                       r"divisible by 32 \(2 \*\* \(model\.num_levels - 1\)\), got \[56, 56, 56\]; "
                       r"e\.g\. data\.crop_size=\[64,64,64\]$"):
        validate(cfg)
