"""The served model's limits (unet3d.serving.pyfunc_model): the logged ``serve`` group, the
``UNET3D_SERVE_*`` overrides, and the 503 of a busy server, without a server."""

from __future__ import annotations

import json
import threading

import pytest
from mlflow.exceptions import MlflowException

from unet3d.errors import ConfigError
from unet3d.serving.codec import example_request
from unet3d.serving.pyfunc_model import SegmentationModel, serving_limits


def test_defaults_come_from_conf_serve_and_the_environment_wins() -> None:
    from omegaconf import OmegaConf

    from unet3d.run import CONFIG_DIR

    defaults = OmegaConf.load(f"{CONFIG_DIR}/serve/default.yaml")
    limits = serving_limits(None, environ={})
    assert (limits.volume.max_voxels, limits.volume.max_bytes, limits.max_concurrent,
            limits.retry_after_s) == (defaults.max_voxels, defaults.max_volume_bytes,
                                      defaults.max_concurrent, defaults.retry_after_s)
    logged = serving_limits({"max_voxels": 1000, "max_concurrent": 3}, environ={})
    assert (logged.volume.max_voxels, logged.max_concurrent) == (1000, 3)
    served = serving_limits({"max_voxels": 1000},
                            environ={"UNET3D_SERVE_MAX_VOXELS": " 64 ",
                                     "UNET3D_SERVE_MAX_CONCURRENT": "1"})
    assert (served.volume.max_voxels, served.max_concurrent) == (64, 1)


@pytest.mark.parametrize(("serve", "environ", "message"), [
    ({}, {"UNET3D_SERVE_MAX_VOXELS": "lots"},
     r"^UNET3D_SERVE_MAX_VOXELS: must be an integer >= 1, got 'lots'$"),
    ({}, {"UNET3D_SERVE_RETRY_AFTER_S": "0"}, r"^UNET3D_SERVE_RETRY_AFTER_S: must be an integer"),
    ({"max_concurrent": 0}, {}, r"^serve.max_concurrent: must be an integer >= 1, got 0$"),
])
def test_a_bad_limit_is_one_line_naming_it(serve, environ, message) -> None:
    with pytest.raises(ConfigError, match=message):
        serving_limits(serve, environ=environ)


def test_a_request_beyond_max_concurrent_is_a_503_with_retry_after() -> None:
    model = SegmentationModel()
    model.limits = serving_limits({"max_concurrent": 1, "retry_after_s": 7}, environ={})
    model._slots = threading.BoundedSemaphore(1)
    assert model._slots.acquire(blocking=False)  # one prediction running
    with pytest.raises(MlflowException) as raised:
        model.predict(None, example_request(shape=(4, 4, 4)))
    assert raised.value.get_http_status_code() == 503
    assert json.loads(raised.value.serialize_as_json()) == {
        "error_code": "TEMPORARILY_UNAVAILABLE", "retry_after_s": 7,
        "message": "busy: 1 prediction(s) running (serve.max_concurrent); retry after 7 s"}


def test_an_unexpected_error_is_a_500_of_one_line_without_the_servers_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import unet3d.serving.pyfunc_model as pyfunc_model

    def broken(frame, folder, limits):
        raise OSError(28, "No space left on device", str(folder / "x" / "x_t1.nii.gz"))

    monkeypatch.setattr(pyfunc_model, "write_request_cases", broken)
    model = SegmentationModel()
    model.limits = serving_limits(None, environ={})
    model._slots = threading.BoundedSemaphore(1)
    with pytest.raises(MlflowException) as raised:
        model.predict(None, example_request(shape=(4, 4, 4)))
    body = json.loads(raised.value.serialize_as_json())
    assert raised.value.get_http_status_code() == 500
    assert body["message"].startswith("internal error: OSError: [Errno 28] No space left on "
                                      "device: '<request>/cases/x/x_t1.nii.gz' (see the server")
    assert model._slots.acquire(blocking=False)  # no slot was taken
