"""benchmarks._common: result files hold one record per host, keyed by the record's host."""

from __future__ import annotations

import json

import pytest

from benchmarks._common import host_key, host_records, read_result, write_result

OTHER_CPU = {"model_name": "AMD EPYC", "vendor": "AuthenticAMD", "family": "25", "model": "1",
             "cpus": "2", "flags": {}, "bf16": "none"}


def test_host_key_is_derived_from_the_host_record() -> None:
    assert host_key({"cpu": OTHER_CPU}) == "amd-epyc-family-25-model-1-2-cpus-no-bf16"
    # records from before environment.cpu: what they have
    assert host_key({"cpu_model": "Intel(R) Xeon(R) Processor", "cpu_count": 2}) \
        == "intel-xeon-processor-2-cpus"
    assert host_key({"gpu": "NVIDIA H200", "cpu": OTHER_CPU}) == "nvidia-h200"


def test_a_file_keeps_every_hosts_record_and_replaces_only_its_own(tmp_path, capsys) -> None:
    path = tmp_path / "pipeline.json"
    write_result(path, {"benchmark": "pipeline", "ratio": 59.0})
    write_result(path, {"benchmark": "pipeline", "ratio": 58.0,
                        "environment": {"cpu": OTHER_CPU, "host": "EPYC-c"}})
    write_result(path, {"benchmark": "pipeline", "ratio": 60.0})  # this host again

    document = json.loads(path.read_text())
    assert document["benchmark"] == "pipeline"
    assert set(document["hosts"]) == {host_key(), host_key({"cpu": OTHER_CPU})}
    assert read_result(path)["ratio"] == 60.0
    other = read_result(path, host_key({"cpu": OTHER_CPU}))
    assert other["ratio"] == 58.0
    assert other["environment"]["cpu"] == OTHER_CPU
    assert f"(host {host_key()})" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.tmp-*"))


@pytest.mark.parametrize("exists", [True, False])
def test_an_older_one_record_file_is_read_as_that_hosts_record(tmp_path, exists) -> None:
    path = tmp_path / "cpu_peak.json"
    if exists:
        path.write_text(json.dumps({"benchmark": "cpu_peak", "float32_gflops": 222.0,
                                    "environment": {"cpu": OTHER_CPU}}))
    records = host_records(path)
    assert records == ({host_key({"cpu": OTHER_CPU}): json.loads(path.read_text())}
                       if exists else {})
    if exists:  # a new record is added beside it, the old one kept as it was
        write_result(path, {"benchmark": "cpu_peak", "float32_gflops": 300.0})
        assert host_records(path)[host_key({"cpu": OTHER_CPU})]["float32_gflops"] == 222.0
        assert read_result(path)["float32_gflops"] == 300.0
