"""The trained models of checkpoint prefixes, rebuilt from their runs' recorded settings.

``load_ensemble`` rebuilds each prefix's network from its run's recorded model settings (the
job's ``model`` group when the run has none) and restores its weights;
``unet3d.inference.ensemble.EnsemblePredictor`` runs them. The prefixes come from
``unet3d.inference.checkpoints.resolve_model_checkpoints``. ``trained_labels`` reads the label
convention and head the members were trained with, so that their output is translated into the
labels of the data set they segment (``unet3d.inference.labels``). What a job segments with,
from its config: ``unet3d.inference.job_setup``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unet3d.config import model_head
from unet3d.config.vocabulary import DEFAULT_HEAD, DEFAULT_NUM_REGIONS
from unet3d.errors import CheckpointError, ConfigError
from unet3d.inference.checkpoints import CHECKPOINT_KEY, run_config, run_dir_of
from unet3d.runs.identity import IDENTITY_FILE, read_identity

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _trained_model_settings(run_dir: Path) -> dict[str, Any] | None:
    """The ``model`` settings a run was trained with: its identity's, else its config's."""
    if (run_dir / IDENTITY_FILE).is_file():
        identity = read_identity(run_dir)
        if identity is not None and identity.model:
            return dict(identity.model)
    config = run_config(run_dir)
    if config is None or config.get("model") is None:
        return None
    try:
        from omegaconf import OmegaConf

        trained = OmegaConf.to_container(config.model, resolve=False)
    except Exception:
        return None
    return trained if isinstance(trained, dict) else None


def _recorded_model(run_dir: Path) -> dict[str, Any] | None:
    """The ``model`` group a run recorded, when it names its ``_target_`` (else None).

    Read from the run's ``run_identity.json``, else its ``.hydra/config.yaml``; records written
    before models were components (no ``_target_``) do not count.
    """
    trained = _trained_model_settings(run_dir)
    if trained is None or not trained.get("_target_"):
        return None
    return trained


def _model_mismatch_hint(model_cfg: Any, prefix: str) -> str:
    """Name the model keys where the run that wrote ``prefix`` differs from ``model_cfg``."""
    trained = _trained_model_settings(run_dir_of(prefix))
    if trained is None:
        return ""
    try:
        from omegaconf import OmegaConf

        current = (OmegaConf.to_container(model_cfg, resolve=True)
                   if OmegaConf.is_config(model_cfg) else dict(model_cfg))
    except Exception:
        return ""
    differing = sorted(
        name for name in set(trained) | set(current) if trained.get(name) != current.get(name)
    )
    if not differing:
        return ""
    details = ", ".join(
        f"model.{name}={trained.get(name)!r} (now {current.get(name)!r})" for name in differing
    )
    return f"; the run was trained with {details}: pass the same model settings"


def _member_settings(model_cfg: Any, prefix: str) -> tuple[Any, bool]:
    """The model settings to rebuild ``prefix``'s network with, and whether they are recorded.

    Raises:
        CheckpointError: the recorded network takes other inputs than ``model_cfg`` (the data
            of this job). Its classes may differ: they are translated by label convention.
    """
    recorded = _recorded_model(run_dir_of(prefix))
    if recorded is None:
        log.info("%s: its run has no recorded model settings; building the model group's "
                 "network (%s)", prefix, model_cfg.get("_target_"))
        return model_cfg, False
    for key in ("in_channels",):
        if recorded.get(key) != model_cfg.get(key):
            raise CheckpointError(
                f"{prefix}: its run was trained with model.{key}={recorded.get(key)!r}, this "
                f"job needs model.{key}={model_cfg.get(key)!r}"
            )
    return _with_new_arguments(recorded, model_cfg, prefix), True


#: Arguments builders gained after runs were first recorded, and the value every run recorded
#: before them was built with (``head``: region-based training came later; softmax before).
LATER_ARGUMENTS = {"head": DEFAULT_HEAD, "num_regions": DEFAULT_NUM_REGIONS}
#: Prefixes whose filled-in arguments were logged (once per process).
_LOGGED_FILLS: set[str] = set()


def _with_new_arguments(recorded: dict[str, Any], model_cfg: Any, prefix: str) -> dict[str, Any]:
    """``recorded`` plus the required arguments its builder gained since the run was recorded
    (``LATER_ARGUMENTS``: ``head`` and ``num_regions`` for runs older than region-based
    training, with the values those runs were built with, whatever this job's ``model`` group
    says); recorded values are never replaced. Logged once per prefix when it adds any."""
    import inspect

    from hydra.utils import get_method

    try:
        parameters = inspect.signature(get_method(str(recorded["_target_"]))).parameters
    except Exception:  # an unimportable target fails with its own message when built
        return recorded
    added = {name: LATER_ARGUMENTS[name] for name, parameter in parameters.items()
             if parameter.default is inspect.Parameter.empty and name not in recorded
             and name in LATER_ARGUMENTS}
    if added and prefix not in _LOGGED_FILLS:
        _LOGGED_FILLS.add(prefix)
        log.info("%s: its run recorded no %s (older unet3d); built with %s, as such runs were",
                 prefix, ", ".join(f"model.{name}" for name in added),
                 ", ".join(f"{name}={value!r}" for name, value in added.items()))
    return {**recorded, **added}


def member_model_settings(model_cfg: Any, prefix: str) -> dict[str, Any]:
    """The model settings ``load_ensemble`` rebuilds ``prefix``'s network from (a plain dict).

    Raises:
        CheckpointError: the recorded network takes other inputs than ``model_cfg``.
    """
    settings, _ = _member_settings(model_cfg, prefix)
    from omegaconf import OmegaConf

    if OmegaConf.is_config(settings):
        settings = OmegaConf.to_container(settings, resolve=True)
    return dict(settings)


def load_ensemble(model_cfg: Any, prefixes: Sequence[str], runtime: Any = None) -> list[Any]:
    """Rebuild each checkpoint's network from its run's recorded settings; restore its weights.

    Each member is built from the ``model`` group its training run recorded
    (``run_identity.json``, else ``.hydra/config.yaml``; ``_target_`` and arguments), not from
    the current command line, so that an ensemble may mix networks and ``model=`` need not be
    repeated. A run without such a record is built from ``model_cfg``. Models are created in
    the runtime's strategy scope (one process) so that they run on the configured device with
    the configured precision policy.

    Args:
        model_cfg: the job's ``model`` group: the fallback, and the ``in_channels`` and
            ``num_classes`` every member must have.
        prefixes: checkpoint prefixes (``resolve_model_checkpoints``).
        runtime: the job's runtime (its ``context.scope()``; its ``precision`` is checked to
            be the members' compute dtype), or None.

    Returns:
        One ``keras.Model`` per prefix, weights restored.

    Raises:
        ConfigError: no prefix, ``model_cfg``'s network does not build, or a member does not
            compute in the configured precision.
        CheckpointError: a checkpoint does not restore (naming the model settings of its run
            when they differ from ``model_cfg``), a recorded network cannot be rebuilt, or it
            takes other inputs or classes than ``model_cfg``.
    """
    from unet3d.model.build import build_model_from_config
    from unet3d.training.checkpoint import restore_weights

    if not prefixes:
        raise ConfigError(f"{CHECKPOINT_KEY}: no checkpoint to load")
    context = getattr(runtime, "context", None)
    use_scope = context is not None and int(getattr(context, "world_size", 1)) <= 1
    models = []
    for prefix in prefixes:
        settings, recorded = _member_settings(model_cfg, prefix)
        try:
            if use_scope:
                with context.scope():
                    model = build_model_from_config(settings)
            else:
                model = build_model_from_config(settings)
        except ConfigError as error:
            if not recorded:
                raise
            raise CheckpointError(f"{prefix}: cannot rebuild the network from its run's "
                                  f"recorded model settings: {error}") from None
        try:
            restore_weights(model, prefix)
        except CheckpointError as error:
            hint = "" if recorded else _model_mismatch_hint(model_cfg, prefix)
            raise CheckpointError(f"{error}{hint}") from None
        log.info("%s: %s (%s, %s parameters)%s", prefix, settings.get("name", ""),
                 settings.get("_target_"), f"{model.count_params():,}",
                 " from its run's recorded model settings" if recorded else "")
        models.append(model)
    precision = getattr(runtime, "precision", None)
    if getattr(precision, "compute_dtype", None) is not None:
        from unet3d.runtime.precision import check_inference_precision

        check_inference_precision(models, precision)
    log.info("loaded %d model(s): %s", len(models), ", ".join(prefixes))
    return models


def recorded_convention(run_dir: Path) -> Any:
    """The ``LabelConvention`` a run's data set had (BraTS 2018-2021 for older runs).

    Raises:
        CheckpointError: the recorded convention is unreadable.
    """
    from unet3d.data.layouts.convention import BRATS2019, LabelConvention

    identity = read_identity(run_dir) if (run_dir / IDENTITY_FILE).is_file() else None
    recorded = identity.data.get("convention") if identity is not None else None
    if not recorded:
        return BRATS2019
    try:
        return LabelConvention.from_dict(recorded)
    except (ConfigError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{run_dir / IDENTITY_FILE}: unreadable data.convention "
                              f"({error})") from None


def trained_labels(prefixes: Sequence[str]) -> tuple[Any, str]:
    """The label convention and ``model.head`` the checkpoints' runs were trained with.

    Args:
        prefixes: checkpoint prefixes of one model or an ensemble.

    Returns:
        ``(LabelConvention, head)``; runs recorded before conventions existed count as BraTS
        2018-2021 with a softmax head.

    Raises:
        CheckpointError: the members were trained on different label conventions or heads
            (their outputs cannot be averaged), or a recorded convention is unreadable.
    """
    found: list[tuple[str, Any, str]] = []
    for prefix in prefixes:
        run_dir = run_dir_of(prefix)
        settings = _trained_model_settings(run_dir) or {}
        found.append((prefix, recorded_convention(run_dir),
                      model_head(settings)))
    if not found:
        raise ConfigError(f"{CHECKPOINT_KEY}: no checkpoint to load")
    first_prefix, convention, head = found[0]
    for prefix, other, other_head in found[1:]:
        if other.to_dict() != convention.to_dict() or other_head != head:
            raise CheckpointError(
                f"{prefix}: trained on labels {other.name} with a {other_head} head, but "
                f"{first_prefix} on {convention.name} with a {head} head; an ensemble's "
                "members must share labels and head"
            )
    return convention, head
