"""unet3d's lesion-wise scores equal the official BraTS 2023 / 2024 scripts' on the same cases.

The scripts' outputs were produced by ``make_lesionwise_fixture.py`` (the record in
``data/lesionwise_official.json`` names the repositories' commits and the packages used); the
cases are in ``data/lesionwise_official_inputs.npz``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unet3d.data.layouts.convention import BRATS2023, LabelConvention
from unet3d.evaluation.lesionwise import RULES, lesionwise_regions, region_values

DATA = Path(__file__).parent / "data"
RECORD = json.loads((DATA / "lesionwise_official.json").read_text(encoding="utf-8"))
INPUTS = np.load(DATA / "lesionwise_official_inputs.npz")
POST = LabelConvention("brats2024_post", {0: "background", 1: "NETC", 2: "SNFH", 3: "ET",
                                          4: "RC"},
                       {"ET": (3,), "TC": (1, 3), "WT": (1, 2, 3), "NETC": (1,), "SNFH": (2,),
                        "RC": (4,)})


def test_fixture_records_how_it_was_made():
    made = RECORD["produced_by"]
    assert made["brats2023"]["commit"].startswith("43c9052")
    assert made["brats2024"]["commit"].startswith("f1131e3")
    rules = {case["rules"] for case in RECORD["cases"]}
    assert rules == {"brats2023", "brats2023_met", "brats2024"}
    assert len(RECORD["cases"]) >= 40


@pytest.mark.parametrize("case", RECORD["cases"], ids=[c["name"] for c in RECORD["cases"]])
def test_equals_official_scripts(case):
    rules = RULES[case["rules"]]
    convention = POST if case["rules"] == "brats2024" else BRATS2023
    pred = INPUTS[f"{case['name']}__pred"]
    ref = INPUTS[f"{case['name']}__ref"]
    # The scripts read the spacing from the NIfTI header: float32 zooms.
    spacing = [float(np.float32(side)) for side in case["spacing"]]
    ours = lesionwise_regions(pred, ref, rules, region_values(rules, convention), spacing)
    assert list(ours) == list(case["official"])
    for region, official in case["official"].items():
        got = ours[region]
        assert abs(got.dice - official["dice"]) <= 1e-4, (region, got, official)
        assert abs(got.hd95 - official["hd95"]) <= 1e-4, (region, got, official)
        assert (got.tp, got.fn, got.fp) == (official["tp"], official["fn"], official["fp"]), (
            region, got, official)
