"""``evaluation.lesionwise`` in the composed config: default, checks, and what ``auto`` picks
for each data set's label convention."""

from __future__ import annotations

import pytest

from tests.test_config import compose_config
from unet3d.config import validate
from unet3d.data.layouts.convention import BRATS2019, BRATS2023, MSD_BRAIN, LabelConvention
from unet3d.errors import ConfigError
from unet3d.evaluation.lesionwise import lesionwise_scorer, resolve_rules
from unet3d.modes.score import score_convention

POST = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                          4: "RC"}, {"ET": (3,), "RC": (4,)})


def test_default_is_auto_and_bad_values_are_one_line():
    assert compose_config().evaluation.lesionwise == "auto"
    with pytest.raises(ConfigError, match=r"^evaluation\.lesionwise: must be one of auto, off, "):
        validate(compose_config("evaluation.lesionwise=brats2030"))


@pytest.mark.parametrize(("convention", "expected"), [
    (BRATS2023, "brats2023"), (POST, "brats2024"), (BRATS2019, None), (MSD_BRAIN, None)])
def test_auto_follows_the_convention(convention, expected):
    assert resolve_rules("auto", convention) == expected
    assert resolve_rules("off", convention) is None
    assert resolve_rules("brats2023", convention) == "brats2023"


@pytest.mark.parametrize(("data", "expected"), [
    ("synthetic_brats2023", "brats2023"), ("synthetic_brats2024", "brats2024"),
    ("brats2023", "brats2023"), ("brats2024_post", "brats2024"), ("synthetic", None),
    ("synthetic_hard", None), ("brats2021", None), ("msd_brain", None)])
def test_each_data_set_gets_its_years_rules(data, expected):
    cfg = compose_config(f"data={data}", "mode=score", "score.predictions=/",
                         "score.references=/")
    validate(cfg)  # mode=score needs no data.raw_dir
    scorer = lesionwise_scorer(cfg.evaluation.lesionwise, score_convention(cfg))
    assert (None if scorer is None else scorer.name) == expected


def test_rules_that_need_a_missing_tissue_are_a_config_error():
    with pytest.raises(ConfigError, match=r"^evaluation\.lesionwise: lesion-wise brats2024: "
                                          r"label convention brats2023 has no label for RC"):
        lesionwise_scorer("brats2024", BRATS2023)
