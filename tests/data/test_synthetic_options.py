"""The generator's difficulty settings (data.synthetic.*) and the data=synthetic_hard preset."""

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import ndimage

from unet3d.config.synthetic_options import OPTION_KEYS, SyntheticOptions, options_from
from unet3d.data.synthetic.case import TISSUE_CODES, case_grade, generate_case
from unet3d.data.synthetic.generate import generate_dataset, synthetic_settings_key
from unet3d.errors import ConfigError, DataError

SHAPE = (40, 40, 32)
ONE = (1.0, 1.0, 1.0)
CONF = Path(__file__).resolve().parents[2] / "conf" / "data"


def _hgg(seed: int = 2019) -> int:
    return next(i for i in range(20) if case_grade(seed, i) == "HGG")


def test_explicit_defaults_give_todays_cases() -> None:
    defaults = options_from({"lgg_fraction": 0.25, "intensity_scale": [0.8, 1.25],
                             "tissue_jitter": 0.05, "tumour_contrast": 1, "noise": [0.025, 0.025],
                             "bias": 0.12, "blur": [0, 0], "slice_thickness": [1, 1],
                             "satellites": [0, 0], "enhancing_islands": [0, 0], "rim_gaps": 0})
    assert defaults == SyntheticOptions() and defaults.non_default() == {}
    assert not defaults.extras
    for index in range(3):
        plain = generate_case(2019, index, SHAPE, ONE)
        explicit = generate_case(2019, index, SHAPE, ONE, defaults)
        assert plain.image.tobytes() == explicit.image.tobytes()
        assert plain.label.tobytes() == explicit.label.tobytes()


def test_the_hard_preset_composes_and_parses() -> None:
    hard = OmegaConf.load(CONF / "synthetic_hard.yaml").synthetic
    options = options_from(hard)
    # Every difficulty setting; resection cavities are post-treatment data's
    # (data=synthetic_brats2024), not a difficulty.
    assert set(options.non_default()) == set(OPTION_KEYS) - {"resection_fraction"}
    default = OmegaConf.load(CONF / "synthetic.yaml").synthetic
    assert {key: hard[key] for key in ("num_cases", "shape", "spacing", "seed", "layout")} == \
        {key: default[key] for key in ("num_cases", "shape", "spacing", "seed", "layout")}
    assert synthetic_settings_key(hard) != synthetic_settings_key(default)


def test_hard_cases_are_deterministic_and_differ_from_the_defaults() -> None:
    options = options_from(OmegaConf.load(CONF / "synthetic_hard.yaml").synthetic)
    first = generate_case(5, 1, SHAPE, ONE, options)
    again = generate_case(5, 1, SHAPE, ONE, options)
    assert first.image.tobytes() == again.image.tobytes()
    assert first.label.tobytes() == again.label.tobytes()
    assert not np.array_equal(first.image, generate_case(5, 1, SHAPE, ONE).image)
    assert set(np.unique(first.label).tolist()) <= {0, 1, 2, 4}
    brain = first.image[..., 0] > 0
    assert brain[first.label > 0].all() and (first.image[~brain] == 0).all()


def test_lgg_fraction_decides_which_cases_have_enhancing_tumour() -> None:
    for fraction, has_et in ((1.0, False), (0.0, True)):
        options = SyntheticOptions(lgg_fraction=fraction)
        for index in range(4):
            case = generate_case(3, index, SHAPE, ONE, options)
            assert case.grade == ("HGG" if has_et else "LGG")
            assert (4 in np.unique(case.label)) == has_et


def test_satellites_make_multifocal_tumours() -> None:
    counts = []
    for satellites in ((0, 0), (3, 3)):
        options = SyntheticOptions(satellites=satellites, noise=(0.02, 0.03))
        components = [ndimage.label(generate_case(7, i, (48, 48, 40), ONE, options).label > 0)[1]
                      for i in range(4)]
        counts.append(sum(components))
    assert counts[1] > counts[0]


def test_islands_add_and_rim_gaps_remove_enhancing_tumour() -> None:
    index = _hgg()
    base = SyntheticOptions(noise=(0.02, 0.03))
    plain = generate_case(2019, index, SHAPE, ONE, base)
    islands = generate_case(2019, index, SHAPE, ONE,
                            SyntheticOptions(noise=(0.02, 0.03), enhancing_islands=(4, 4)))
    gaps = generate_case(2019, index, SHAPE, ONE, SyntheticOptions(noise=(0.02, 0.03),
                                                                  rim_gaps=0.8))
    et, ncr = lambda case: int((case.label == 4).sum()), lambda case: int((case.label == 1).sum())
    assert et(islands) > et(plain)
    assert ndimage.label(islands.label == 4)[1] > ndimage.label(plain.label == 4)[1]
    assert et(gaps) < et(plain) and ncr(gaps) > ncr(plain)
    assert np.array_equal(plain.label > 0, gaps.label > 0)  # the same whole tumour


def test_contrast_noise_and_resolution_settings_change_the_images() -> None:
    index = _hgg()
    default = generate_case(2019, index, SHAPE, ONE)
    low = generate_case(2019, index, SHAPE, ONE, SyntheticOptions(tumour_contrast=0.3))
    noisy = generate_case(2019, index, SHAPE, ONE, SyntheticOptions(noise=(0.15, 0.15)))
    thick = generate_case(2019, index, SHAPE, ONE, SyntheticOptions(slice_thickness=(3, 3)))
    white = default.tissue == TISSUE_CODES["white_matter"]
    edema = default.tissue == TISSUE_CODES["edema"]

    def flair_ratio(case):
        flair = case.image[..., 3].astype(np.float64)
        return flair[edema].mean() / flair[white].mean()

    assert flair_ratio(low) < flair_ratio(default) - 0.3
    assert noisy.image[..., 0][white].std() > 2 * default.image[..., 0][white].std()
    assert np.array_equal(thick.label, default.label)  # the truth keeps full resolution

    def slice_to_slice(case):
        return np.abs(np.diff(case.image[..., 3].astype(np.float64), axis=2))[white[..., 1:]].mean()

    assert slice_to_slice(thick) < slice_to_slice(default)


@pytest.mark.parametrize(("settings", "message"), [
    ({"lgg_fraction": 1.5},
     r"^data\.synthetic\.lgg_fraction: must be in \[0\.0, 1\.0\], got 1\.5$"),
    ({"noise": 0.1}, r"^data\.synthetic\.noise: must be \[low, high\], got 0\.1$"),
    ({"satellites": [0.5, 2]}, r"^data\.synthetic\.satellites: must be whole numbers"),
    ({"blur": [2, 1]}, r"^data\.synthetic\.blur: low must be <= high, got \[2\.0, 1\.0\]$"),
    ({"tumour_contrast": "low"}, r"^data\.synthetic\.tumour_contrast: must be a number"),
    ({"rim_gaps": True}, r"^data\.synthetic\.rim_gaps: must be a number"),
])
def test_bad_option_values_name_their_key(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        options_from(settings)


def test_options_are_recorded_and_other_options_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    generate_dataset(out, 2, (24, 24, 16), ONE, 3, rim_gaps=0.4, satellites=[1, 1])
    manifest = OmegaConf.load(out / "synthetic_manifest.json")
    assert manifest.settings.options == {"rim_gaps": 0.4, "satellites": [1, 1]}
    with pytest.raises(DataError, match="other settings"):
        generate_dataset(out, 2, (24, 24, 16), ONE, 3, rim_gaps=0.5, satellites=[1, 1])
    key = {"num_cases": 2, "shape": [24, 24, 16], "spacing": [1, 1, 1], "seed": 3}
    assert synthetic_settings_key({**key, "rim_gaps": 0.4}) != synthetic_settings_key(key)
    assert synthetic_settings_key({**key, "rim_gaps": 0.0}) == synthetic_settings_key(key)


def test_the_data_set_component_generates_the_hard_cases(tmp_path: Path) -> None:
    from unet3d.data.datasets import SyntheticBraTS

    settings = {"num_cases": 2, "shape": [24, 24, 16], "spacing": [1, 1, 1], "seed": 3,
                "layout": "flat", "rim_gaps": 0.4, "noise": [0.1, 0.1]}
    folder = SyntheticBraTS(settings, raw_dir=None).cases_dir(tmp_path)
    assert folder.parent.name == synthetic_settings_key(settings)
    manifest = OmegaConf.load(folder / "synthetic_manifest.json")
    assert manifest.settings.options == {"rim_gaps": 0.4, "noise": [0.1, 0.1]}
