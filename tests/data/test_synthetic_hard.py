"""data=synthetic_hard keeps the promises its YAML states (statistics of the cases, not Dice)."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from unet3d.config.synthetic_options import SyntheticOptions, options_from
from unet3d.data.synthetic.case import case_grade, generate_case
from unet3d.data.synthetic.stats import (
    case_statistics,
    difficulty_statistics,
    overlap_coefficient,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
HARD = OmegaConf.load(CONF / "synthetic_hard.yaml").synthetic
#: How many of the preset's cases the image statistics are measured on (of num_cases).
SAMPLE = 10


def test_overlap_coefficient_of_hand_made_samples() -> None:
    same = np.arange(1000, dtype=np.float64)
    assert overlap_coefficient(same, same) == pytest.approx(1.0)
    # Disjoint halves of one range: no bin holds both.
    assert overlap_coefficient(same[:500], same[500:]) == pytest.approx(0.0, abs=0.02)
    # Half of the second sample lies on the first: overlap one half.
    assert overlap_coefficient(same[:500], same[250:750]) == pytest.approx(0.5, abs=0.03)
    assert np.isnan(overlap_coefficient(same[:0], same))


def test_case_statistics_of_a_default_case_are_easy() -> None:
    # data=synthetic: edema well apart from normal brain on FLAIR.
    hgg = next(i for i in range(20) if case_grade(2019, i) == "HGG")
    stats = case_statistics(generate_case(2019, hgg, (64, 64, 48), (1.0, 1.0, 1.0)))
    assert stats["has_et"] == 1.0
    assert stats["flair_edema_vs_brain"] < 0.15
    assert 0.0 < stats["et_to_wt"] < stats["tc_to_wt"] < 1.0


@pytest.fixture(scope="module")
def hard_statistics() -> dict[str, float]:
    options = options_from(HARD)
    shape = [int(s) for s in HARD.shape]
    cases = (generate_case(int(HARD.seed), index, shape, list(HARD.spacing), options)
             for index in range(SAMPLE))
    return difficulty_statistics(cases)


def test_share_of_cases_without_et_over_the_whole_set() -> None:
    # YAML: 10-30 % of the 40 cases have no ET (5 of 40 with seed 2019; BraTS 2019: 76 LGG of
    # 335 = 23 %, not all without ET).
    grades = [case_grade(int(HARD.seed), i, float(HARD.lgg_fraction))
              for i in range(int(HARD.num_cases))]
    share = grades.count("LGG") / len(grades)
    assert 0.10 <= share <= 0.30


def test_tumour_and_tissue_intensities_overlap(hard_statistics: dict[str, float]) -> None:
    # YAML: edema and normal brain share 35-65 % of their FLAIR histogram (data=synthetic: < 15
    # %), the core and edema 35-65 % of their T1ce histogram.
    assert 0.35 <= hard_statistics["flair_edema_vs_brain"] <= 0.65
    assert 0.35 <= hard_statistics["t1ce_core_vs_edema"] <= 0.65
    default = difficulty_statistics(
        generate_case(2019, i, (64, 64, 48), (1.0, 1.0, 1.0)) for i in range(4))
    assert default["flair_edema_vs_brain"] < hard_statistics["flair_edema_vs_brain"] - 0.2


def test_core_and_enhancing_sizes(hard_statistics: dict[str, float]) -> None:
    # YAML: median TC 15-40 % and ET 10-30 % of the whole tumour's voxels.
    assert 0.15 <= hard_statistics["tc_to_wt"] <= 0.40
    assert 0.10 <= hard_statistics["et_to_wt"] <= 0.30


def test_core_scale_grows_the_core_and_keeps_default_cases() -> None:
    hgg = next(i for i in range(20) if case_grade(2019, i) == "HGG")
    plain = generate_case(2019, hgg, (48, 48, 40), (1.0, 1.0, 1.0))
    same = generate_case(2019, hgg, (48, 48, 40), (1.0, 1.0, 1.0), SyntheticOptions(core_scale=1.0))
    assert plain.image.tobytes() == same.image.tobytes()
    larger = generate_case(2019, hgg, (48, 48, 40), (1.0, 1.0, 1.0),
                           SyntheticOptions(core_scale=1.5))
    core = np.isin(plain.label, (1, 4)).sum()
    assert np.isin(larger.label, (1, 4)).sum() > 1.5 * core
