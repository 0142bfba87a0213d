"""Write the official lesion-wise scores of the test cases: ``data/lesionwise_official.json`` and
the cases themselves, ``data/lesionwise_official_inputs.npz``.

Not part of the suite: it runs the challenge's own scripts, which cannot be shipped here, in an
environment with their pins. How the committed fixture was made (the record it writes says the
same)::

    git clone https://github.com/rachitsaluja/BraTS-2023-Metrics   # at 43c9052
    git clone https://github.com/rachitsaluja/BraTS-2024-Metrics   # at f1131e3
    # each repository's requirements.txt, on Python 3.9 (pandas 1.3.4 has no newer wheel)
    python3.9 -m venv /tmp/off23 && /tmp/off23/bin/pip install numpy==1.24.3 scipy==1.11.1 \\
        connected-components-3d==3.12.1 nibabel==5.1.0 pandas==1.3.4
    python3.9 -m venv /tmp/off24 && /tmp/off24/bin/pip install numpy==1.26.4 scipy==1.10.1 \\
        connected-components-3d==3.12.1 nibabel==5.0.1 pandas==2.2.3 medpy==0.5.2
    /tmp/off23/bin/python tests/evaluation/make_lesionwise_fixture.py --brats2023 BraTS-2023-Metrics
    /tmp/off24/bin/python tests/evaluation/make_lesionwise_fixture.py --brats2024 BraTS-2024-Metrics

Each run replaces its own year's cases in the files and keeps the other's. Each case is written
as two NIfTI files with a diagonal affine of its spacing and scored by
``get_LesionWiseResults(pred, gt, challenge)`` in a temporary working folder (the 2024 script
writes ``./tmp_gt`` and ``./tmp_pred`` there).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# Run as a script: its own folder is first on sys.path, so the cases import as a module.
from lesionwise_cases import hand_built_2024_cases, hand_built_cases, random_case, wide_case

HERE = Path(__file__).resolve().parent

#: (rules, official module, challenge name, with RC labels, number of random cases)
RUNS = (("brats2023", "brats2023", "metrics", "BraTS-GLI", False, 14),
        ("brats2023", "brats2023_met", "metrics", "BraTS-MET", False, 4),
        ("brats2024", "brats2024", "metrics_GLI", "BraTS-GLI", True, 18))
SPACINGS = ((1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (0.8, 1.2, 2.0))


def _commit(repo: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def _official(repo: Path, module: str):
    sys.path.insert(0, str(repo))
    for name in [n for n in sys.modules if n == "surface_distance" or n.startswith(
            "surface_distance.") or n in ("metrics", "metrics_GLI")]:
        del sys.modules[name]
    loaded = importlib.import_module(module)
    sys.path.remove(str(repo))
    return loaded


def _score(official, challenge: str, pred: np.ndarray, ref: np.ndarray, spacing) -> dict:
    import nibabel as nib

    affine = np.diag([*spacing, 1.0])
    with tempfile.TemporaryDirectory() as work:
        old = os.getcwd()
        os.chdir(work)
        try:
            nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine), "case_pred.nii.gz")
            nib.save(nib.Nifti1Image(ref.astype(np.uint8), affine), "case_gt.nii.gz")
            with contextlib.redirect_stdout(io.StringIO()):
                result = official.get_LesionWiseResults(
                    os.path.join(work, "case_pred.nii.gz"), os.path.join(work, "case_gt.nii.gz"),
                    challenge)
        finally:
            os.chdir(old)
    table = result[0] if isinstance(result, tuple) else result
    scores = {}
    for _, row in table.iterrows():
        scores[str(row["Labels"])] = {
            "dice": float(row["LesionWise_Score_Dice"]),
            "hd95": float(row["LesionWise_Score_HD95"]),
            "tp": int(row["Num_TP"]), "fn": int(row["Num_FN"]), "fp": int(row["Num_FP"])}
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brats2023", type=Path, help="a BraTS-2023-Metrics checkout")
    parser.add_argument("--brats2024", type=Path, help="a BraTS-2024-Metrics checkout")
    parser.add_argument("--out", type=Path, default=HERE / "data")
    args = parser.parse_args()
    from importlib.metadata import version

    repos = {year: path for year, path in (("brats2023", args.brats2023),
                                           ("brats2024", args.brats2024)) if path}
    if not repos:
        parser.error("name --brats2023 and/or --brats2024")
    json_path = args.out / "lesionwise_official.json"
    npz_path = args.out / "lesionwise_official_inputs.npz"
    record = json.loads(json_path.read_text()) if json_path.exists() else {"produced_by": {}}
    arrays = dict(np.load(npz_path)) if npz_path.exists() else {}
    cases = [case for case in record.get("cases", [])
             if not any(case["rules"].startswith(year) for year in repos)]
    for year, rules, module, challenge, with_rc, count in RUNS:
        if year not in repos:
            continue
        official = _official(repos[year], module)
        inputs = [(f"{rules}_random_{seed}", *random_case(1000 * len(rules) + seed, with_rc),
                   SPACINGS[seed % len(SPACINGS)]) for seed in range(count)]
        if rules in ("brats2023", "brats2024"):
            inputs += [(f"{rules}_wide_{seed}", *wide_case(100 + seed, with_rc), (1.0, 1.0, 1.0))
                       for seed in range(4)]
        hand_built = {"brats2023": hand_built_cases, "brats2024": hand_built_2024_cases}
        if rules in hand_built:
            inputs += [(f"{rules}_{name}", pred, ref, spacing)
                       for name, (pred, ref, spacing) in hand_built[rules]().items()]
        for name, pred, ref, spacing in inputs:
            arrays[f"{name}__pred"], arrays[f"{name}__ref"] = pred, ref
            cases.append({"name": name, "rules": rules, "spacing": list(spacing),
                          "official": _score(official, challenge, pred, ref, spacing)})
            print(name, cases[-1]["official"], flush=True)
    for year, path in repos.items():
        record["produced_by"][year] = {
            "repository": f"rachitsaluja/BraTS-{year[5:]}-Metrics",
            "file": "metrics.py" if year == "brats2023" else "metrics_GLI.py",
            "commit": _commit(path), "python": sys.version.split()[0],
            "packages": {name: version(name) for name in (
                "numpy", "scipy", "connected-components-3d", "nibabel", "pandas")}}
    record["produced_by"]["script"] = "tests/evaluation/make_lesionwise_fixture.py"
    record["produced_by"]["inputs"] = ("lesionwise_official_inputs.npz: <name>__pred and "
                                       "<name>__ref, uint8, from lesionwise_cases.py")
    record["cases"] = sorted(cases, key=lambda case: case["name"])
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(npz_path, **arrays)
    json_path.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
