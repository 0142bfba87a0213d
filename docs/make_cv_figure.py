"""Draw README's cross-validation figure from a real sweep's runs in the MLflow store.

Usage (from the project root, after a sweep):
    python docs/make_cv_figure.py --store sqlite:///mlflow.db --out docs/images/cv_summary.png
It takes the newest parent run (a run with `cv_mean/...` metrics), its nested fold runs, and
plots each fold's Dice per region with the parent's mean and standard deviation.
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402

REGIONS = ("Dice_WT", "Dice_TC", "Dice_ET")


def main() -> None:
    """Find the newest CV parent run and plot its folds."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="sqlite:///mlflow.db")
    parser.add_argument("--out", default="docs/images/cv_summary.png")
    arguments = parser.parse_args()
    client = mlflow.MlflowClient(tracking_uri=arguments.store)
    experiments = [e.experiment_id for e in client.search_experiments()]
    parents = [run for run in client.search_runs(experiments, order_by=["start_time DESC"])
               if "cv_mean/Dice_WT" in run.data.metrics]
    if not parents:
        raise SystemExit(f"{arguments.store}: no cross-validation parent run found")
    parent = parents[0]
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    children = sorted((run for run in children if "fold" in run.data.tags),
                      key=lambda run: int(run.data.tags["fold"]))
    figure, axis = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / max(len(children), 1)
    for index, run in enumerate(children):
        values = [run.data.metrics.get(region, float("nan")) for region in REGIONS]
        positions = [r + (index - (len(children) - 1) / 2) * width for r in range(len(REGIONS))]
        axis.bar(positions, values, width * 0.95, label=f"fold {run.data.tags['fold']}")
    means = [parent.data.metrics[f"cv_mean/{region}"] for region in REGIONS]
    spreads = [parent.data.metrics.get(f"cv_std/{region}", 0.0) for region in REGIONS]
    axis.errorbar(range(len(REGIONS)), means, yerr=spreads, fmt="kD", capsize=6,
                  label="mean ± std")
    axis.set_xticks(range(len(REGIONS)), ["WT {1,2,4}", "TC {1,4}", "ET {4}"])
    axis.set_ylabel("held-out Dice")
    axis.set_ylim(0, 1.05)
    axis.set_title(f"{len(children)}-fold CV from MLflow run {parent.info.run_name}", fontsize=9)
    axis.legend(fontsize=7, ncol=3, loc="lower left")
    figure.tight_layout()
    figure.savefig(arguments.out)
    print(arguments.out)


if __name__ == "__main__":
    main()
