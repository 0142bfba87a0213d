"""Toy task for the sweep-callback tests: a job that logs like the runner, without TensorFlow."""

import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from unet3d.runs.results import write_job_result
from unet3d.tracking.parent_run import current_parent_run_id
from unet3d.tracking.run_status import tracked_run
from unet3d.tracking.tracker import Tracker


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    hydra_cfg = HydraConfig.get()
    output_dir = hydra_cfg.runtime.output_dir
    overrides = list(hydra_cfg.overrides.task)
    tracker = Tracker(cfg.tracking, cfg.paths.root_dir)
    tracker.start(
        cfg,
        output_dir,
        run_name=f"toy-fold{cfg.fold}",
        tags={"fold": cfg.fold, "precision": cfg.precision},
        parent_run_id=current_parent_run_id(),
    )
    try:
        with tracked_run(tracker):
            tracker.log_metrics({"train/loss": 1.0 / (cfg.fold + 1)}, step=1)
            if cfg.sleep_seconds > 0:
                (Path(output_dir) / "sleeping").touch()
                time.sleep(cfg.sleep_seconds)
            if cfg.fold == cfg.fail_fold and cfg.precision == cfg.fail_precision:
                raise FloatingPointError("loss is NaN at step 1")
            if hydra_cfg.job.get("num") == cfg.fail_job:
                raise FloatingPointError(f"job {cfg.fail_job} diverged")
            offset = 0.01 if cfg.precision == "amp" else 0.0
            metrics = {"Dice_WT": 0.5 + 0.1 * cfg.fold + offset - (cfg.lr - 0.5) ** 2,
                       "HD95_WT": 10.0 - cfg.fold}
            if cfg.lesionwise:
                metrics.update({"LesionDice_WT": 0.4 + 0.1 * cfg.fold,
                                "LesionHD95_WT": 100.0 - cfg.fold})
            tracker.log_metrics(metrics, step=2)
    except BaseException as error:
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        write_job_result(
            output_dir, status, cfg.fold, overrides, {}, f"{type(error).__name__}: {error}",
            tracker.run_id,
        )  # fmt: skip
        raise
    write_job_result(output_dir, "FINISHED", cfg.fold, overrides, metrics, None, tracker.run_id)
    # An Optuna sweep needs a float (unet3d.run returns the `optimized_metric` mean likewise).
    return metrics["Dice_WT"] if cfg.return_objective else metrics


if __name__ == "__main__":
    main()
