"""Checkpoint resolution (prefix, checkpoints/, run dir, sweep dir, fold, lists) and ensembles."""

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from unet3d.config.settings import input_divisor
from unet3d.errors import CheckpointError, ConfigError
from unet3d.inference.checkpoints import resolve_model_checkpoints
from unet3d.inference.ensemble import EnsemblePredictor
from unet3d.inference.labels import make_labeler
from unet3d.inference.models import load_ensemble, member_model_settings
from unet3d.run import register_resolvers
from unet3d.runs.identity import RunIdentity

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_config(*overrides):
    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.fixture(scope="module")
def cfg():
    return compose_config("debug=fast", "mode=predict", "inference.batch_size=4")


def save_run(run_dir: Path, cfg, seed: int, fold: int | None = None, step: int = 3,
             model_overrides: str = "") -> str:
    """Build the configured tiny model with ``seed`` and save it like the training loop does."""
    import keras
    import tensorflow as tf

    from unet3d.model.build import build_model_from_config
    from unet3d.training.checkpoint import CHECKPOINT_FOLDER, Checkpointer

    keras.utils.set_random_seed(seed)
    model = build_model_from_config(cfg.model)
    variable = tf.Variable(step, dtype=tf.int64, trainable=False)
    prefix = Checkpointer(run_dir / CHECKPOINT_FOLDER, model, None, variable).save()
    if fold is not None:
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        (run_dir / ".hydra" / "config.yaml").write_text(f"fold: {fold}\n{model_overrides}")
    return prefix


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, cfg):
    """A Hydra sweep dir of a 2-fold cross-validation (jobs out of order, plus a failed job)."""
    root = tmp_path_factory.mktemp("sweep")
    prefixes = {
        1: save_run(root / "0_fold=1", cfg, seed=11, fold=1),
        0: save_run(root / "1_fold=0", cfg, seed=10, fold=0),
    }
    failed = root / "2_fold=2"
    (failed / ".hydra").mkdir(parents=True)
    (failed / ".hydra" / "config.yaml").write_text("fold: 2\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root, prefixes


def test_prefix_checkpoints_folder_and_run_dir_resolve_to_the_newest(tmp_path, cfg):
    run = tmp_path / "run"
    save_run(run, cfg, seed=1, step=3)
    newest = save_run(run, cfg, seed=1, step=6)
    assert Path(newest).name == "ckpt-6"
    assert resolve_model_checkpoints(str(run)) == [newest]
    assert resolve_model_checkpoints(run / "checkpoints") == [newest]
    older = str(run / "checkpoints" / "ckpt-3")
    assert resolve_model_checkpoints(older) == [older]
    assert resolve_model_checkpoints([older, str(run), older]) == [older, newest]


def test_sweep_dir_gives_every_fold_or_the_chosen_fold(sweep):
    root, prefixes = sweep
    assert resolve_model_checkpoints(str(root)) == [prefixes[0], prefixes[1]]
    assert resolve_model_checkpoints(str(root), fold=1) == [prefixes[1]]
    assert resolve_model_checkpoints([str(root / "1_fold=0")], fold=0) == [prefixes[0]]
    with pytest.raises(CheckpointError, match=r"predict\.checkpoint: .*fold 2 .*no checkpoint"):
        resolve_model_checkpoints(str(root), fold=2)
    with pytest.raises(CheckpointError, match=r"fold 3 .*checkpointed folds: \[0, 1\]"):
        resolve_model_checkpoints(str(root), fold=3)


def test_several_jobs_for_one_fold_are_ambiguous(tmp_path, cfg):
    save_run(tmp_path / "0_fold=0,lr=1", cfg, seed=1, fold=0)
    save_run(tmp_path / "1_fold=0,lr=2", cfg, seed=2, fold=0)
    assert len(resolve_model_checkpoints(tmp_path)) == 2
    with pytest.raises(ConfigError, match=r"predict\.checkpoint: .*2 jobs for fold 0"):
        resolve_model_checkpoints(tmp_path, fold=0)


def record_identity(run_dir: Path, fold: int) -> None:
    """Write the run's ``run_identity.json`` as a job does when it first uses its folder."""
    RunIdentity(fold=fold, num_folds=2, seed=42, data={"name": "brats2019"},
                model={"name": "unet3d"}).write(run_dir)


def test_sweep_jobs_are_found_at_any_depth_and_their_fold_read_from_their_identity(
        tmp_path, cfg):
    """Jobs that Hydra put several folders deep (a path-valued override in the job folder name)
    are still the sweep's folds; the fold comes from run_identity.json, not the folder name."""
    root = tmp_path / "sweep"
    deep = root / "0_data.raw_dir=" / "abs" / "path" / "to"
    fold0, fold1 = deep / "data,fold=1", deep / "data,fold=0"  # names that mislead on purpose
    prefixes = {0: save_run(fold0, cfg, seed=10), 1: save_run(fold1, cfg, seed=11)}
    record_identity(fold0, 0)
    record_identity(fold1, 1)
    (fold1 / ".hydra").mkdir()
    (fold1 / ".hydra" / "config.yaml").write_text("fold: 0\n")  # the identity wins
    # Not members: a job's own subfolders, and hidden folders.
    save_run(fold0 / "archive", cfg, seed=12, fold=0)
    save_run(root / ".snapshot" / "job", cfg, seed=13, fold=0)
    (root / "multirun.yaml").write_text("hydra: {}\n")

    assert resolve_model_checkpoints(str(root)) == [prefixes[0], prefixes[1]]
    assert resolve_model_checkpoints(str(root), fold=1) == [prefixes[1]]
    assert resolve_model_checkpoints(str(root), fold=0) == [prefixes[0]]
    # A job that has not saved a checkpoint yet is a job of its fold all the same.
    untrained = root / "1_data.raw_dir=" / "x" / "data,fold=2"
    untrained.mkdir(parents=True)
    record_identity(untrained, 2)
    with pytest.raises(CheckpointError, match=r"fold 2 \(its job 1_data\.raw_dir=/x/data,fold=2 "
                                              r"has no checkpoint\)"):
        resolve_model_checkpoints(str(root), fold=2)
    assert len(resolve_model_checkpoints(str(root))) == 2


def test_a_run_dir_with_an_identity_warns_on_another_fold(tmp_path, cfg, caplog):
    prefix = save_run(tmp_path / "run", cfg, seed=1)
    record_identity(tmp_path / "run", 1)
    with caplog.at_level("WARNING"):
        assert resolve_model_checkpoints(tmp_path / "run", fold=0) == [prefix]
    assert "trained as fold 1, not fold 0" in caplog.text


@pytest.mark.parametrize("spec", [None, "", []])
def test_empty_spec_names_the_key(spec):
    with pytest.raises(ConfigError, match=r"^predict\.checkpoint: missing"):
        resolve_model_checkpoints(spec)


def test_nothing_found_names_the_key_and_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"^predict\.checkpoint: .*nowhere: path does not"):
        resolve_model_checkpoints(str(tmp_path / "nowhere"))
    (tmp_path / "empty_run" / "figures").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"^predict\.checkpoint: .*empty_run: no checkpoint"):
        resolve_model_checkpoints(tmp_path / "empty_run")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="no TensorFlow checkpoint"):
        resolve_model_checkpoints(tmp_path / "file.txt")


def predictor(models, cfg) -> EnsemblePredictor:
    return EnsemblePredictor.from_config(models, cfg.inference, crop_size=cfg.data.crop_size,
                                         num_classes=int(cfg.model.num_classes),
                                         jit_compile=False, background_class=0,
                                         input_divisor=input_divisor(cfg.model))


def test_load_ensemble_restores_each_members_weights(sweep, cfg):
    import keras

    from unet3d.model.build import build_model_from_config

    root, prefixes = sweep
    models = load_ensemble(cfg.model, [prefixes[0], prefixes[1]])
    keras.utils.set_random_seed(10)
    expected = build_model_from_config(cfg.model)
    for loaded, original in zip(models[0].weights, expected.weights, strict=True):
        np.testing.assert_array_equal(loaded.numpy(), original.numpy())
    assert not np.array_equal(models[0].weights[0].numpy(), models[1].weights[0].numpy())


def test_a_model_mismatch_names_the_differing_settings(tmp_path, cfg):
    """A run without a usable record is built from the model group; a mismatch is named."""
    bigger = compose_config("debug=fast", "model.base_filters=8")
    prefix = save_run(tmp_path / "run", bigger, seed=1, fold=0,
                      model_overrides="model:\n  base_filters: 8\n")
    with pytest.raises(CheckpointError, match=r"model\.base_filters=8 \(now 4\)"):
        load_ensemble(cfg.model, [prefix])


def test_each_member_is_rebuilt_from_its_runs_recorded_model(tmp_path, cfg):
    """nnU-Net style: the network comes from the trained run's own settings (its identity or
    its .hydra/config.yaml), not from the current model group."""
    from omegaconf import OmegaConf

    bigger = compose_config("debug=fast", "model.base_filters=8")
    recorded = save_run(tmp_path / "recorded", bigger, seed=1)
    RunIdentity(fold=0, num_folds=2, seed=42,
                model=OmegaConf.to_container(bigger.model, resolve=True)).write(
                    tmp_path / "recorded")
    composed = save_run(tmp_path / "composed", bigger, seed=2)
    (tmp_path / "composed" / ".hydra").mkdir()
    OmegaConf.save({"fold": 0, "model": OmegaConf.to_container(bigger.model, resolve=True)},
                   tmp_path / "composed" / ".hydra" / "config.yaml")
    plain = save_run(tmp_path / "plain", cfg, seed=3)
    models = load_ensemble(cfg.model, [recorded, composed, plain])
    sizes = [model.get_layer("input_block_1_conv").filters for model in models]
    assert sizes == [8, 8, 4]
    # The recorded network must fit this job's data and classes.
    other = compose_config("debug=fast", "model.in_channels=3")
    with pytest.raises(CheckpointError, match=r"model\.in_channels=4, this job needs "
                                              r"model\.in_channels=3"):
        load_ensemble(other.model, [recorded])


def test_a_run_recorded_before_a_required_argument_existed_still_loads(tmp_path, cfg, caplog):
    """A run recorded before region-based training (no ``head`` / ``num_regions``, which the
    builder now requires) is rebuilt with the model group's values; recorded ones stay."""
    import logging

    prefix = save_run(tmp_path / "old", cfg, seed=4)
    old = {key: value for key, value in dict(cfg.model).items()
           if key not in ("head", "num_regions")}
    RunIdentity(fold=0, num_folds=2, seed=42, model=old).write(tmp_path / "old")
    with caplog.at_level(logging.INFO, logger="unet3d.inference.models"):
        (model,) = load_ensemble(cfg.model, [prefix])
    assert int(model.output_shape[-1]) == int(cfg.model.num_classes)
    (line,) = [record.getMessage() for record in caplog.records
               if "older unet3d" in record.getMessage()]
    assert "recorded no model.head, model.num_regions" in line and "head='softmax'" in line
    # Such runs were built with a softmax head, whatever this job's model group says.
    (model,) = load_ensemble(compose_config("debug=fast", "model.head=regions").model, [prefix])
    assert int(model.output_shape[-1]) == int(cfg.model.num_classes)
    # A recorded value is never replaced by the model group's.
    settings = member_model_settings(compose_config("debug=fast", "model.base_filters=8").model,
                                     prefix)
    assert settings["base_filters"] == cfg.model.base_filters


def test_a_recorded_model_that_cannot_be_rebuilt_names_the_checkpoint(tmp_path, cfg):
    prefix = save_run(tmp_path / "run", cfg, seed=1)
    model = {**dict(cfg.model), "_target_": "unet3d.model.unet3d.gone"}
    RunIdentity(fold=0, num_folds=2, seed=42, model=model).write(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"ckpt-3: cannot rebuild the network from its "
                                              r"run's recorded model settings: model\._target_"):
        load_ensemble(cfg.model, [prefix])


def test_ensemble_probabilities_are_the_mean_of_the_members(sweep, cfg):
    root, prefixes = sweep
    models = load_ensemble(cfg.model, [prefixes[0], prefixes[1]])
    image = np.random.default_rng(0).normal(size=(40, 36, 28, 4)).astype(np.float32)
    single = [predictor([model], cfg).probabilities(image) for model in models]
    both = predictor(models, cfg).probabilities(image)
    assert both.shape == (40, 36, 28, 4) and both.dtype == np.float32
    np.testing.assert_allclose(both, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(both.sum(axis=-1), 1.0, atol=1e-5)
    assert not np.allclose(single[0], single[1])


def test_one_window_equal_to_the_volume_is_the_direct_forward_pass(sweep, cfg):
    root, prefixes = sweep
    model = load_ensemble(cfg.model, [prefixes[0]])[0]
    image = np.random.default_rng(1).normal(size=(32, 32, 32, 4)).astype(np.float32)
    probabilities = predictor(model, cfg).probabilities(image)
    direct = model(image[None], training=False).numpy()[0]
    np.testing.assert_allclose(probabilities, direct, rtol=1e-5, atol=1e-6)
    labels = make_labeler()(probabilities)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 4}
    np.testing.assert_array_equal(
        labels, np.where(direct.argmax(-1) == 3, 4, direct.argmax(-1))
    )
