"""benchmarks.train_step: a share of the matmul peak only against a peak of this host."""

from __future__ import annotations

from pathlib import Path

from benchmarks._common import host_cpu
from benchmarks.train_step import same_host_peak


def test_the_peak_of_this_host_is_used_and_another_hosts_is_not(capsys) -> None:
    here = host_cpu()
    peak = {"float32_gflops": 200.0, "environment": {"cpu": dict(here), "host": "this"}}
    assert same_host_peak(peak, Path("cpu_peak.json")) is peak

    other = {"float32_gflops": 200.0,
             "environment": {"cpu": {**here, "family": f"{here.get('family')}0"},
                             "host": "AMD EPYC (family 260)"}}
    assert same_host_peak(other, Path("cpu_peak.json")) is None
    assert "cpu_peak.json: measured on another host (AMD EPYC (family 260))" \
        in capsys.readouterr().out

    unrecorded = {"float32_gflops": 200.0, "environment": {"cpu_model": "AMD EPYC"}}
    assert same_host_peak(unrecorded, Path("cpu_peak.json")) is None
    assert same_host_peak(None, Path("cpu_peak.json")) is None
