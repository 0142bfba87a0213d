"""``python -m unet3d.run mode=export`` from a run folder, then mode=predict on the export: a
damaged export folder and a missing engine each end the job with one ERROR line and exit 1."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.conftest import mlflow_client, run_cli
from tests.inference.test_engines import ENGINES
from tests.inference.test_predict import compose_config, save_model
from tests.serving.test_export_model import BLOCKER
from unet3d.data.synthetic.generate import generate_dataset

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(len(ENGINES) < 2, reason="needs openvino and onnxruntime")]


def _errors(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if "][ERROR] - " in line]


def test_export_from_the_cli_and_its_failures(tmp_path: Path):
    run = tmp_path / "run"
    save_model(run, compose_config("debug=fast"), seed=2, fold=0)
    generate_dataset(tmp_path / "cases", 1, (36, 36, 28), (1.0, 1.0, 1.0), seed=3)
    exported = run_cli("debug=fast", "mode=export", f"export.checkpoint={run}",
                       "export.formats=[onnx,openvino]", "hydra.run.dir=outputs/export",
                       cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    folder = tmp_path / "outputs" / "export" / "export"
    assert (folder / "unet3d_export.json").is_file()
    client = mlflow_client(tmp_path)
    (mlflow_run,) = client.search_runs(client.search_experiments()[0].experiment_id)
    assert mlflow_run.data.tags["unet3d.export_dir"] == str(folder)
    assert mlflow_run.data.tags["unet3d.export_model_uri"].startswith("models:/")
    listed = {item.path for item in client.list_artifacts(mlflow_run.info.run_id, "export")}
    assert "export/unet3d_export.json" in listed and "export/member-0" in listed

    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "member-0" / "model.onnx").write_bytes(b"not onnx")
    common = ("debug=fast", "mode=predict", f"predict.input_dir={tmp_path / 'cases'}",
              "tracking.enabled=false")
    result = run_cli(*common, f"predict.checkpoint={damaged}", "inference.engine=onnxruntime",
                     f"predict.output_dir={tmp_path / 'out1'}", cwd=tmp_path)
    assert result.returncode == 1
    (line,) = _errors(result)
    assert "member-0/model.onnx differs from the SHA-256" in line

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.replace(
        '("tensorflow", "keras", "tf_keras", "tf2onnx")', '("openvino",)'))
    root = Path(__file__).resolve().parents[2]
    result = run_cli(*common, f"predict.checkpoint={folder}", "inference.engine=openvino",
                     f"predict.output_dir={tmp_path / 'out2'}", cwd=tmp_path,
                     env={"PYTHONPATH": f"{blocker}:{root}"})
    assert result.returncode == 1
    (line,) = _errors(result)
    assert "inference.engine=openvino: openvino is not installed here" in line
    assert 'pip install -e ".[openvino]"' in line
    assert not (tmp_path / "out2").exists() or not list((tmp_path / "out2").glob("*.nii.gz"))
