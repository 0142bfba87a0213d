"""Job folder names of a sweep (unet3d.runs.naming): flat, safe, stable; and through Hydra."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from unet3d.runs.naming import MAX_NAME_LENGTH, RESOLVER_NAME, job_dirname, short_hash

ROOT = Path(__file__).resolve().parents[2]
EXCLUDE = ["hydra.run.dir", "hydra.sweep.dir", "resume"]
#: The hydra.sweep.subdir line proposed for conf/hydra/default.yaml.
SUBDIR = ("${hydra.job.num}_${" + RESOLVER_NAME + ":${hydra.overrides.task},"
          "${hydra.job.config.override_dirname.exclude_keys}}")


def assert_safe(name: str) -> None:
    assert "/" not in name and "\\" not in name and os.sep not in name
    assert not re.search(r'[<>:"|?*\s\x00-\x1f]', name), name
    assert len(name) <= MAX_NAME_LENGTH


def test_plain_overrides_read_like_hydras_override_dirname() -> None:
    assert job_dirname(["fold=1", "precision=amp", "training.max_steps=5"]) == (
        "fold=1,precision=amp,training.max_steps=5")
    # Sorted like Hydra, so the order on the command line does not matter.
    assert job_dirname(["precision=amp", "fold=1"]) == job_dirname(["fold=1", "precision=amp"])
    assert job_dirname(["data.crop_size=[32,32,32]"]) == "data.crop_size=[32,32,32]"
    assert job_dirname([]) == job_dirname(None) == ""


def test_excluded_keys_are_left_out_with_or_without_a_prefix() -> None:
    overrides = ["fold=0", "resume=true", "+resume=false", "hydra.sweep.dir=/tmp/x"]
    assert job_dirname(overrides, EXCLUDE) == "fold=0"
    assert job_dirname(overrides, None) != "fold=0"
    # resume=true on a rerun gives the folder of the first run.
    assert job_dirname(["fold=0", "resume=true"], EXCLUDE) == job_dirname(["fold=0"], EXCLUDE)


def test_path_values_become_their_last_component_and_a_hash() -> None:
    path = "/abs/path/to/data"
    name = job_dirname(["fold=0", f"data.raw_dir={path}", "data=brats2019"], EXCLUDE)
    assert name == f"data.raw_dir=data-{short_hash(path)},data=brats2019,fold=0"
    assert_safe(name)
    # Another folder of the same name gets another hash; trailing and Windows separators too.
    other = job_dirname(["data.raw_dir=/other/data"])
    assert other.startswith("data.raw_dir=data-") and other != job_dirname([f"data.raw_dir={path}"])
    assert job_dirname(["data.raw_dir=/abs/data/"]).startswith("data.raw_dir=data-")
    assert job_dirname([r"data.raw_dir=C:\brats\train"]).startswith("data.raw_dir=train-")
    assert job_dirname(["x=/"]) == f"x=path-{short_hash('/')}"
    listed = job_dirname(["predict.checkpoint=[/runs/a,/runs/b]"])
    assert listed.startswith("predict.checkpoint=b-") and "]" not in listed


def test_long_and_unsafe_values_are_shortened_or_sanitised_with_a_hash() -> None:
    long_value = "x" * 60
    name = job_dirname([f"tracking.run_name={long_value}"])
    assert name == f"tracking.run_name={'x' * 24}-{short_hash(long_value)}"
    assert job_dirname(["a=" + "y" * 40]) == "a=" + "y" * 40  # at the limit: kept
    # Unsafe characters are replaced; the hash keeps 'a b' and 'a?b' apart.
    spaced, questioned = job_dirname(["name='a b'"]), job_dirname(["name='a?b'"])
    assert spaced.startswith("name='a_b'-") and spaced != questioned
    assert_safe(spaced)
    assert_safe(job_dirname(["tracking.uri=http://host:5000"]))
    assert_safe(job_dirname(["model/encoder=big", "~foo", "+bar@pkg=1"]))


def test_the_whole_name_is_capped_with_a_hash() -> None:
    overrides = [f"key{index}=" + "v" * 30 for index in range(10)]
    name = job_dirname(overrides)
    assert len(name) == MAX_NAME_LENGTH and re.search(r"-[0-9a-f]{6}$", name)
    assert name == job_dirname(list(reversed(overrides)))
    assert name != job_dirname([*overrides[:-1], "key9=" + "w" * 30])
    assert len(job_dirname(overrides, max_length=50)) == 50
    with pytest.raises(ValueError, match="max_length"):
        job_dirname(overrides, max_length=5)


APP = '''
import json, sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from unet3d.runs.naming import RESOLVER_NAME, job_dirname

OmegaConf.register_new_resolver(RESOLVER_NAME, job_dirname)


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def main(cfg):
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "job.json").write_text(json.dumps({"fold": cfg.fold}))


if __name__ == "__main__":
    main()
'''


def test_a_real_hydra_multirun_puts_every_job_directly_in_the_sweep_dir(tmp_path) -> None:
    """OmegaConf hands the resolver Hydra's lists; a path override stays out of the layout."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(textwrap.dedent(f"""\
        fold: 0
        resume: false
        data:
          raw_dir: null
        hydra:
          sweep:
            dir: sweep
            subdir: {SUBDIR}
          job:
            config:
              override_dirname:
                item_sep: ","
                exclude_keys: [{", ".join(EXCLUDE)}]
        """))
    (tmp_path / "app.py").write_text(APP)
    raw_dir = tmp_path / "data set" / "brats"  # Hydra's sweeper escapes the space
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "app.py", "--multirun", "fold=0,1", f"data.raw_dir={raw_dir}"]
    names = []
    for extra in ([], ["resume=true"]):  # a rerun with resume=true finds the same folders
        result = subprocess.run([*command, *extra], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120, env=environment)
        assert result.returncode == 0, result.stdout + result.stderr
        sweep = tmp_path / "sweep"
        jobs = sorted(path.parent for path in sweep.rglob("job.json"))
        names.append([job.relative_to(sweep).as_posix() for job in jobs])
    assert names[0] == names[1]
    first, second = names[0]
    assert re.fullmatch(r"0_data\.raw_dir=brats-([0-9a-f]{6}),fold=0", first)
    assert second == "1" + first[1:-1] + "1"
    assert [json.loads((job / "job.json").read_text())["fold"] for job in jobs] == [0, 1]
