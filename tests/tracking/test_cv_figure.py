"""The voxel- vs lesion-wise figure of a cross-validation summary (``cv_summary/cv_scores.png``)."""

from __future__ import annotations

from unet3d.tracking.cv_figure import has_lesionwise, plot_cv_scores
from unet3d.tracking.summary import cross_validation_summary


def _results(lesionwise: bool) -> list[dict]:
    records = []
    for fold in range(3):
        metrics = {"Dice_ET": 0.7 + 0.05 * fold, "HD95_ET": 5.0 + fold}
        if lesionwise:
            metrics.update({"LesionDice_ET": 0.5, "LesionHD95_ET": 100.0 - fold})
        records.append({"status": "FINISHED", "fold": fold, "overrides": [f"fold={fold}"],
                        "metrics": metrics})
    return records


def test_figure_only_with_lesionwise_metrics(tmp_path):
    assert not has_lesionwise(cross_validation_summary(_results(False))[0])
    summary = cross_validation_summary(_results(True))[0]
    assert has_lesionwise(summary)
    path = plot_cv_scores(summary, tmp_path / "cv_scores.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
