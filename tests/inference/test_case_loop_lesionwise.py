"""The per-case loop of evaluate and predict adds the lesion-wise metrics to each scored row."""

from __future__ import annotations

import numpy as np

from tests.evaluation.lesionwise_cases import hand_built_cases
from unet3d.data.layouts.convention import BRATS2023
from unet3d.inference.case_loop import segment_cases
from unet3d.inference.inputs import InputCase, PendingCase
from unet3d.inference.labels import make_labeler

PRED, REF, SPACING = hand_built_cases()["two_lesions_one_missed"]


class _Predictor:
    """Probabilities that argmax to ``PRED`` (classes of BraTS 2023: 0, 1, 2, 3)."""

    def probabilities(self, image):
        return np.eye(4, dtype=np.float32)[PRED]


def _case(case_id: str, label):
    def load():
        return InputCase(case_id, np.zeros((*PRED.shape, 4), np.float32), label, SPACING, None)
    return PendingCase(case_id, f"/data/{case_id}", load)


def test_rows_get_lesionwise_metrics():
    from unet3d.evaluation.lesionwise import lesionwise_scorer

    scorer = lesionwise_scorer("auto", BRATS2023)
    result = segment_cases(_Predictor(), [_case("a", REF), _case("b", None)], verb="evaluated",
                           labeler=make_labeler(BRATS2023, BRATS2023), convention=BRATS2023,
                           lesionwise=scorer)
    assert [row["case_id"] for row in result.rows] == ["a"] and result.unlabelled == ["b"]
    row = result.rows[0]
    assert row["Dice_ET"] == 2 * 64 / (64 + 128)
    assert row["LesionDice_ET"] == 0.5 and row["LesionHD95_ET"] == 187.0
    assert (row["LesionTP_ET"], row["LesionFN_ET"]) == (1.0, 1.0)
    plain = segment_cases(_Predictor(), [_case("a", REF)], verb="evaluated",
                          labeler=make_labeler(BRATS2023, BRATS2023), convention=BRATS2023)
    assert not any(key.startswith("Lesion") for key in plain.rows[0])
