"""The served model of an export folder: logged on a real MLflow store, loaded and queried in
a process where importing TensorFlow or Keras fails; it answers like mode=predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.inference.test_engines import ENGINES, region_dice
from tests.inference.test_predict import compose_config, make_runtime, save_model
from unet3d.data.synthetic.generate import generate_dataset
from unet3d.inference.engines import engine_installed

ROOT = Path(__file__).resolve().parents[2]

#: Put first on PYTHONPATH: Python imports it at start; then any import of these fails.
BLOCKER = '''
import sys

BLOCKED = ("tensorflow", "keras", "tf_keras", "tf2onnx")


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the served export must not import it")
        return None


sys.meta_path.insert(0, _Blocked())
'''

CLIENT = '''
import base64, gzip, json, os, sys
from pathlib import Path
import mlflow.pyfunc, pandas as pd
case = Path(sys.argv[2])
row = {"case_id": "served"}
for name in ("t1", "t1ce", "t2", "flair"):
    row[name] = base64.b64encode((case / f"{case.name}_{name}.nii.gz").read_bytes()).decode()
model = mlflow.pyfunc.load_model(sys.argv[1])
answer = model.predict(pd.DataFrame([row]))
Path(sys.argv[3]).write_bytes(base64.b64decode(answer["segmentation"][0]))
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules,
                  "case_id": str(answer["case_id"][0])}))
'''


@pytest.mark.skipif(not ENGINES, reason="needs openvino or onnxruntime (the test extra)")
def test_the_served_export_answers_without_tensorflow(tracking_cfg, store_root, tmp_path):
    import nibabel as nib

    from unet3d.modes.export import export
    from unet3d.modes.predict import predict
    from unet3d.serving.export_model import log_export_model
    from unet3d.tracking.tracker import Tracker

    generate_dataset(tmp_path / "cases", 1, (40, 36, 28), (1.0, 1.0, 1.0), seed=4)
    (case,) = sorted(path for path in (tmp_path / "cases").iterdir() if path.is_dir())
    run = tmp_path / "run"
    save_model(run, compose_config("debug=fast"), seed=9, fold=0)
    formats = "[onnx]" if engine_installed("onnxruntime") else "[openvino]"
    cfg = compose_config("debug=fast", "mode=export", f"export.checkpoint={run}",
                         f"export.output_dir={tmp_path / 'export'}", f"export.formats={formats}")
    export(cfg, None, tmp_path / "job")
    tracker = Tracker(tracking_cfg, store_root)
    tracker.start(None, tmp_path / "job", run_name="export")
    uri = log_export_model(tracker, cfg, tmp_path / "export")
    tracker.end()
    assert uri is not None and uri.startswith("models:/")

    # mode=predict on the same export in TensorFlow: the reference.
    reference_dir = tmp_path / "reference"
    predict(compose_config("debug=fast", "mode=predict", f"predict.input_dir={tmp_path / 'cases'}",
                           f"predict.output_dir={reference_dir}",
                           f"predict.checkpoint={run}", "inference.engine=tensorflow"),
            make_runtime(), None, tmp_path / "predict-job")
    reference = np.asarray(nib.load(reference_dir / f"{case.name}.nii.gz").dataobj)

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]),
           "MLFLOW_TRACKING_URI": tracking_cfg["uri"],
           "UNET3D_ENGINE_CACHE": str(tmp_path / "probe.json")}
    served = tmp_path / "served.nii.gz"
    process = subprocess.run([sys.executable, "-c", CLIENT, uri, str(case), str(served)],
                             capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    facts = json.loads(process.stdout.strip().splitlines()[-1])
    assert facts == {"tensorflow": False, "keras": False, "case_id": "served"}
    labels = np.asarray(nib.load(served).dataobj)
    assert labels.shape == reference.shape and labels.dtype == np.uint8
    assert min(region_dice(labels, reference).values()) >= 0.999

    # The blocker works: in that environment TensorFlow cannot be imported.
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True,
                           text=True, env=env, timeout=120)
    assert check.returncode != 0 and "blocked" in check.stderr
