"""oneDNN on every x86-64 CPU: ``import unet3d`` sets ``TF_ENABLE_ONEDNN_OPTS=1`` unless the
user chose, TensorFlow then runs its oneDNN kernels, and the runner says who decided."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT
from unet3d.runtime.devices import onednn_state

VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86_LINUX = sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")


def _python(code: str, **env: str | None) -> list[str]:
    """Run ``code`` in a fresh interpreter with ``env`` changes (None: unset); its lines."""
    environ = {key: value for key, value in os.environ.items() if key != VARIABLE}
    environ.update({key: value for key, value in env.items() if value is not None})
    environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


REPORT = ("import os, unet3d; print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), "
          "unet3d.ONEDNN.replace(' ', '_'))")


@pytest.mark.skipif(not X86_LINUX, reason="unet3d sets the variable on x86-64 Linux only")
def test_import_sets_the_variable_when_nobody_chose() -> None:
    assert _python(REPORT) == ["1", "unet3d"]


@pytest.mark.parametrize("value", ["0", "1"])
def test_a_value_in_the_environment_is_kept(value: str) -> None:
    assert _python(REPORT, **{VARIABLE: value}) == [value, "environment"]


def test_tensorflow_imported_first_is_left_alone() -> None:
    code = "import tensorflow\n" + REPORT
    assert _python(code) == ["None", "tensorflow_imported_first"]


@pytest.mark.skipif(not X86_LINUX, reason="unet3d sets the variable on x86-64 Linux only")
def test_tensorflow_runs_onednn_after_import_unet3d() -> None:
    """On this host TensorFlow's own default may be off (no AVX512_VNNI / BF16 / AMX); after
    ``import unet3d`` it is on, and the runner's state line says so."""
    code = ("import unet3d, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port as port\n"
            "from unet3d.runtime.devices import onednn_state\n"
            "print(port.IsMklEnabled(), onednn_state().replace(' ', '_'))")
    assert _python(code) == ["True", "on_(TF_ENABLE_ONEDNN_OPTS=1_set_by_unet3d)"]
    # With the user's opt-out, oneDNN is off and the line names the environment.
    assert _python(code, **{VARIABLE: "0"}) == [
        "False", "off_(TF_ENABLE_ONEDNN_OPTS=0_from_the_environment)"]


def test_state_line_names_who_decided() -> None:
    assert onednn_state(True, "unet3d", {VARIABLE: "1"}) == (
        "on (TF_ENABLE_ONEDNN_OPTS=1 set by unet3d)")
    assert onednn_state(False, "environment", {VARIABLE: "0"}) == (
        "off (TF_ENABLE_ONEDNN_OPTS=0 from the environment)")
    assert onednn_state(False, "tensorflow imported first", {}) == (
        "off (TensorFlow's default: TensorFlow was imported before unet3d)")
    assert onednn_state(True, "not x86-64 Linux", {}) == (
        "on (TensorFlow's default: not x86-64 Linux)")


# ---- values TensorFlow ignores (issue 30, item 5) -----------------------------------------------


@pytest.mark.parametrize("value", ["yes", "on", "", "1 ", " 1", "enabled", "0 "])
def test_values_tensorflow_ignores_are_found(value: str) -> None:
    from unet3d.runtime.onednn import ignored_value

    assert ignored_value({VARIABLE: value}) == value


@pytest.mark.parametrize("value", ["0", "1", "true", "false", "TRUE", "False"])
def test_values_tensorflow_reads_are_accepted(value: str) -> None:
    from unet3d.runtime.onednn import ignored_value, ignored_value_warning

    assert ignored_value({VARIABLE: value}) is None
    assert ignored_value_warning(False, {VARIABLE: value}) is None
    assert ignored_value({}) is None


def test_an_ignored_value_gives_one_warning_quoting_it(caplog) -> None:
    from unet3d.runtime.onednn import ignored_value_warning

    with caplog.at_level("WARNING", logger="unet3d.runtime.onednn"):
        message = ignored_value_warning(False, {VARIABLE: "1 "})
    assert [record.getMessage() for record in caplog.records] == [message]
    assert "TF_ENABLE_ONEDNN_OPTS='1 ' is not a value TensorFlow reads" in message
    assert "oneDNN is off" in message and "TF_ENABLE_ONEDNN_OPTS=1" in message
    on = ignored_value_warning(True, {VARIABLE: "yes"})
    assert "'yes'" in on and "oneDNN is on only because TensorFlow turns it on by default" in on
    assert onednn_state(False, "environment", {VARIABLE: "yes"}) == (
        "off (TF_ENABLE_ONEDNN_OPTS='yes' from the environment, ignored by TensorFlow: its "
        "default)")


DEVICE_LINE = ("import logging, unet3d\n"
               "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
               "from unet3d.runtime.devices import configure_devices\n"
               "from tensorflow.python.util import _pywrap_util_port as port\n"
               "configure_devices({'type': 'cpu'})\n"
               "print('MKL', port.IsMklEnabled())\n")


def test_the_runner_warns_once_about_an_ignored_value() -> None:
    """In a fresh interpreter (one: TensorFlow's import is the cost): TensorFlow ignores
    ``0 `` (Windows' ``set X=0 ``), so it does not turn oneDNN off, and the device setup logs
    one WARNING quoting the value, with the state TensorFlow is really in."""
    value = "0 "
    environ = {key: item for key, item in os.environ.items() if key != VARIABLE}
    environ.update({VARIABLE: value, "TF_CPP_MIN_LOG_LEVEL": "3"})
    result = subprocess.run([sys.executable, "-c", DEVICE_LINE], cwd=ROOT, env=environ,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    enabled = result.stdout.split()[-1] == "True"
    warnings = [line for line in result.stderr.splitlines()
                if line.startswith("WARNING") and VARIABLE in line]
    assert len(warnings) == 1, result.stderr[-3000:]
    assert f"{VARIABLE}={value!r} is not a value TensorFlow reads" in warnings[0]
    assert ("oneDNN is off" in warnings[0]) is not enabled
    (device_line,) = [line for line in result.stderr.splitlines() if "devices: CPU" in line]
    assert f"oneDNN {'on' if enabled else 'off'} ({VARIABLE}={value!r}" in device_line
    # TensorFlow's default on this CPU holds (DefaultOneDnnPolicy), whatever the user meant.
    from unet3d.runtime.cpu_probe import read_cpu_info

    default_on = bool(read_cpu_info().flags & {"avx512_vnni", "avx512_bf16", "avx_vnni",
                                               "amx_tile", "amx_int8", "amx_bf16"})
    if X86_LINUX:
        assert enabled is default_on
