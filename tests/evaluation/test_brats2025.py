"""``evaluation.lesionwise=brats2025``: the official ``brats-evaluation`` package (an optional
extra). Without it, a one-line error naming the extra; with it (``pip install -e ".[brats]"``),
the package's matching on a hand-built case."""

from __future__ import annotations

import importlib.util

import pytest

from tests.evaluation.lesionwise_cases import hand_built_cases
from unet3d.data.layouts.convention import BRATS2023
from unet3d.errors import ConfigError
from unet3d.evaluation.lesionwise import lesionwise_scorer

INSTALLED = importlib.util.find_spec("brats_evaluation") is not None


@pytest.mark.skipif(INSTALLED, reason="brats-evaluation is installed")
def test_missing_package_names_the_extra():
    with pytest.raises(ConfigError) as error:
        lesionwise_scorer("brats2025", BRATS2023)
    assert str(error.value) == ('evaluation.lesionwise: brats2025 needs the official '
                                'brats-evaluation package; install the extra: '
                                'pip install -e ".[brats]"')


@pytest.mark.skipif(not INSTALLED, reason='needs pip install -e ".[brats]"')
def test_package_scores_matched_lesions():
    scorer = lesionwise_scorer("brats2025", BRATS2023)
    pred, ref, spacing = hand_built_cases()["two_lesions_one_missed"]
    metrics = scorer(pred, ref, spacing)
    assert set(metrics) == set(scorer.keys())
    # Matched lesions only enter the Dice: the found cube scores 1, the missed one is an FN.
    assert metrics["LesionDice_ET"] == pytest.approx(1.0)
    assert (metrics["LesionTP_ET"], metrics["LesionFN_ET"], metrics["LesionFP_ET"]) == (1, 1, 0)
