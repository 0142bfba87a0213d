"""precision=auto: the chooser on faked CPU flags, probe times and GPUs; cache, warning, MLflow."""

from __future__ import annotations

import dataclasses
import json
import logging

import keras
import pytest

from unet3d.runtime import precision_auto
from unet3d.runtime.cpu_probe import (
    CACHE_FILE,
    CpuInfo,
    ProbeResult,
    cached_probe,
    host_key,
    parse_cpuinfo,
    read_cache,
)
from unet3d.runtime.precision import configure_precision
from unet3d.runtime.precision_auto import Host, choose_cpu, choose_gpu

AUTO = {"name": "auto", "policy": "auto", "xla": False, "min_speedup": 1.1, "reprobe": False}
AMP = {"name": "amp", "policy": "mixed", "xla": False, "reprobe": False}
ZEN4 = CpuInfo("AMD EPYC 9R14", frozenset({"avx512f", "avx512_bf16", "fma"}))
SAPPHIRE = CpuInfo("Intel(R) Xeon(R) Platinum 8488C",
                   frozenset({"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}))
OLD_XEON = CpuInfo("Intel(R) Xeon(R) CPU E5-2686 v4", frozenset({"avx2", "fma"}))


class FakeProbe:
    """A probe that returns fixed timings and counts its calls."""

    def __init__(self, fp32_ms: float, bf16_ms: float) -> None:
        self.result = ProbeResult(fp32_ms, bf16_ms)
        self.calls = 0

    def __call__(self) -> ProbeResult:
        self.calls += 1
        return self.result


def fake_host(cpu: CpuInfo, probe: FakeProbe | None = None, gpus=None,
              check: FakeProbe | None = None) -> Host:
    """A host of ``cpu``; the re-check of a cached bf16 result is ``check``, else ``probe``."""
    def no_probe() -> ProbeResult:
        raise AssertionError("the probe must not run")

    return Host(cpu=lambda: cpu, probe=probe or no_probe, check=check or probe or no_probe,
                threads=lambda: 2, tf_version=lambda: "2.18.1",
                gpu_details=lambda: list(gpus or []))


@pytest.fixture(autouse=True)
def restore_policy_and_warnings(monkeypatch):
    previous = keras.mixed_precision.global_policy()
    monkeypatch.setattr(precision_auto, "_warned", set())
    yield
    keras.mixed_precision.set_global_policy(previous)


# ---- CPU facts ----------------------------------------------------------------------------------


def test_cpuinfo_is_parsed_for_model_and_bf16_flags():
    text = ("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
            "flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n\nprocessor\t: 1\n"
            "model name\t: AMD EPYC 9R14\nflags\t\t: fpu\n")
    cpu = parse_cpuinfo(text)
    assert cpu.model == "AMD EPYC 9R14" and cpu.bf16_flags == ("avx512_bf16",)
    assert cpu.has_avx512_bf16 and not cpu.has_amx_bf16 and cpu.has_bf16
    assert SAPPHIRE.has_amx_bf16 and SAPPHIRE.bf16_flags == ("amx_bf16", "amx_tile", "avx512_bf16")
    assert not OLD_XEON.has_bf16 and OLD_XEON.describe().endswith("[no bf16 flags]")
    # amx_bf16 without amx_tile is not AMX (a kernel that hides the tiles)
    assert not CpuInfo("x", frozenset({"amx_bf16"})).has_bf16


def test_the_cache_key_changes_with_cpu_identity_flags_tensorflow_and_threads():
    key = host_key(ZEN4, "2.18.1", 2)
    assert key == host_key(CpuInfo(ZEN4.model, frozenset(ZEN4.flags)), "2.18.1", 2)
    identities = [dataclasses.replace(ZEN4, **{name: value})
                  for name, value in [("vendor", "AuthenticAMD"), ("family", "25"),
                                      ("model_id", "17"), ("stepping", "1"),
                                      ("microcode", "0xa101148"),
                                      ("flags", ZEN4.flags | {"sse2"})]]
    keys = {key, host_key(SAPPHIRE, "2.18.1", 2), host_key(ZEN4, "2.19.0", 2),
            host_key(ZEN4, "2.18.1", 4), *(host_key(cpu, "2.18.1", 2) for cpu in identities)}
    assert len(keys) == 10


# ---- the CPU branches ---------------------------------------------------------------------------


def test_no_bf16_flags_is_float32_without_probing(tmp_path):
    info = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=fake_host(OLD_XEON))
    assert info.policy_name == "float32" and info.compute_dtype == "float32"
    assert info.params["precision.auto_choice"] == "float32"
    assert info.params["precision.cpu_bf16_flags"] == "none"
    assert "precision.probe_fp32_ms" not in info.params
    assert not (tmp_path / CACHE_FILE).exists()
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.parametrize("cpu", [ZEN4, SAPPHIRE], ids=["avx512_bf16", "amx"])
def test_bf16_flags_and_a_faster_probe_choose_mixed_bfloat16(tmp_path, cpu, caplog):
    probe = FakeProbe(80.0, 12.0)  # the AMX host of the issue
    with caplog.at_level(logging.INFO, logger="unet3d.runtime.precision"):
        info = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=fake_host(cpu, probe))
    assert (info.policy_name, info.compute_dtype, info.loss_scale) == (
        "mixed_bfloat16", "bfloat16", False)
    assert probe.calls == 1
    assert info.params["precision.probe_fp32_ms"] == "80.00"
    assert info.params["precision.probe_bf16_ms"] == "12.00"
    assert "precision.probe_cached" not in info.params  # the same params on a resume
    assert info.params["precision.cpu"] == cpu.model
    lines = [r.getMessage() for r in caplog.records if "precision auto" in r.getMessage()]
    assert len(lines) == 1 and "mixed_bfloat16" in lines[0] and "fp32 80.0 ms" in lines[0] \
        and "bf16 12.0 ms" in lines[0] and "6.67x faster" in lines[0]


@pytest.mark.parametrize(("fp32_ms", "bf16_ms", "why"), [
    (54.0, 92.0, "slower"),  # the Zen 4 host of the issue
    (50.0, 47.0, "less than 1.1x"),  # faster, but within the noise margin
])
def test_a_slower_or_marginal_probe_chooses_float32(tmp_path, fp32_ms, bf16_ms, why):
    probe = FakeProbe(fp32_ms, bf16_ms)
    info = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=fake_host(ZEN4, probe))
    assert info.policy_name == "float32" and probe.calls == 1
    assert why in info.params["precision.auto_reason"]


def test_min_speedup_is_honoured():
    choice = choose_cpu(ZEN4, lambda: (ProbeResult(50.0, 47.0), True), min_speedup=1.0)
    assert choice.policy == "mixed_bfloat16" and choice.cached


# ---- the cache ----------------------------------------------------------------------------------


def test_a_cached_bf16_result_is_rechecked_with_one_pair_and_reprobe_measures_again(
        tmp_path, caplog):
    probe, check = FakeProbe(54.0, 27.0), FakeProbe(50.0, 26.0)
    host = fake_host(ZEN4, probe, check=check)
    first = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=host)
    assert (probe.calls, check.calls) == (1, 0)
    with caplog.at_level(logging.INFO, logger="unet3d"):
        second = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=host)
    assert (probe.calls, check.calls) == (1, 1)  # the cache, confirmed by one pair
    assert first.policy_name == second.policy_name == "mixed_bfloat16"
    assert second.params == first.params  # a resumed run logs what its first job logged
    assert second.params["precision.probe_bf16_ms"] == "27.00"
    assert "cached" in caplog.text and "re-checked here" in caplog.text
    record = json.loads((tmp_path / CACHE_FILE).read_text())
    (entry,) = record["hosts"].values()
    assert entry["cpu"] == ZEN4.model and entry["threads"] == 2 and entry["probe"]["fp32_ms"] == 54
    again = configure_precision({**AUTO, "reprobe": True}, "CPU", cache_dir=tmp_path, host=host)
    assert (probe.calls, check.calls) == (2, 1) and again.policy_name == "mixed_bfloat16"


def test_a_cached_bf16_result_the_check_contradicts_is_measured_again(tmp_path, caplog):
    """A data folder baked into an image: the entry says bf16 is 2x faster, but on this host
    (same CPU identity) bf16 convolutions are 35x slower."""
    configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=fake_host(ZEN4, FakeProbe(54, 27)))
    probe, check = FakeProbe(54.0, 1900.0), FakeProbe(50.0, 1750.0)
    host = fake_host(ZEN4, probe, check=check)
    with caplog.at_level(logging.WARNING, logger="unet3d.runtime.cpu_probe"):
        info = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=host)
    assert info.policy_name == "float32" and (probe.calls, check.calls) == (1, 1)
    assert info.params["precision.probe_bf16_ms"] == "1900.00"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / CACHE_FILE) in warning and "probing again" in warning
    assert "bf16 2.00x faster" in warning and "bf16 35.00x slower" in warning
    (entry,) = read_cache(tmp_path / CACHE_FILE).values()
    assert entry["probe"]["bf16_ms"] == 1900.0  # the entry now holds this host's result
    # A cached float32 result is used without a check.
    assert configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=host).policy_name \
        == "float32"
    assert (probe.calls, check.calls) == (1, 1)


EPYC_TEXT = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: "
             "{model}\nmodel name\t: AMD EPYC Processor\nstepping\t: {stepping}\n"
             "microcode\t: {microcode}\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
             "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")


def test_two_epyc_hosts_of_one_model_name_get_their_own_entries(tmp_path, monkeypatch,
                                                                 caplog):
    """The issue's case: two "AMD EPYC Processor" hosts with avx512_bf16 share a data folder;
    bf16 is faster on one (Zen 4) and slower on the other (Zen 5). /proc/cpuinfo is faked."""
    from unet3d.runtime import cpu_probe

    hosts = {"zen4": dict(family=25, model=17, stepping=1, microcode="0xa101148"),
             "zen5": dict(family=26, model=2, stepping=1, microcode="0xb002116"),
             "zen4-newer-microcode": dict(family=25, model=17, stepping=1,
                                          microcode="0xa10124e")}
    timings = {"zen4": (54.0, 27.0), "zen5": (54.0, 92.0), "zen4-newer-microcode": (54.0, 28.0)}
    chosen = {}
    for name, identity in hosts.items():
        cpuinfo = tmp_path / f"cpuinfo-{name}"
        cpuinfo.write_text(EPYC_TEXT.format(**identity))
        monkeypatch.setattr(cpu_probe, "CPUINFO", cpuinfo)
        probe = FakeProbe(*timings[name])
        host = Host(probe=probe, threads=lambda: 2, tf_version=lambda: "2.18.1")
        chosen[name] = configure_precision(AUTO, "CPU", cache_dir=tmp_path / "data", host=host)
        assert probe.calls == 1, name  # its own probe, not the other host's entry
    assert {name: info.policy_name for name, info in chosen.items()} == {
        "zen4": "mixed_bfloat16", "zen5": "float32", "zen4-newer-microcode": "mixed_bfloat16"}
    entries = read_cache(tmp_path / "data" / CACHE_FILE).values()
    assert sorted((e["cpu_identity"]["family"], e["cpu_identity"]["microcode"])
                  for e in entries) == [("25", "0xa101148"), ("25", "0xa10124e"),
                                        ("26", "0xb002116")]
    assert {e["cpu"] for e in entries} == {"AMD EPYC Processor"}


def test_cpuinfo_identity_is_parsed_on_x86_and_arm():
    cpu = parse_cpuinfo(EPYC_TEXT.format(family=25, model=17, stepping=1, microcode="0xa1"))
    assert cpu.identity() == {"vendor": "AuthenticAMD", "family": "25", "model": "17",
                              "stepping": "1", "microcode": "0xa1"}
    assert cpu.identity_text() == "AuthenticAMD family 25 model 17 stepping 1 microcode 0xa1"
    arm = parse_cpuinfo("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd bf16\n"
                        "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\n"
                        "CPU part\t: 0xd40\nCPU revision\t: 1\n")
    assert arm.identity() == {"vendor": "0x41", "family": "8", "model": "0xd40",
                              "stepping": "0x1", "microcode": "1"}
    assert "bf16" in arm.flags
    assert CpuInfo("x", frozenset()).identity_text() == "identity unknown"


def test_another_host_gets_its_own_entry(tmp_path):
    configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=fake_host(ZEN4, FakeProbe(54, 92)))
    configure_precision(AUTO, "CPU", cache_dir=tmp_path,
                        host=fake_host(SAPPHIRE, FakeProbe(80, 12)))
    assert len(read_cache(tmp_path / CACHE_FILE)) == 2


@pytest.mark.parametrize("content", ["{not json", '{"format": 99, "hosts": {}}', "[]",
                                     "ENTRY"])
def test_a_corrupt_cache_is_rewritten(tmp_path, caplog, content):
    path = tmp_path / CACHE_FILE
    if content == "ENTRY":  # a valid file whose entry for this host is broken
        key = host_key(ZEN4, "2.18.1", 2)
        content = json.dumps({"format": 1, "hosts": {key: {"probe": {"fp32_ms": "x"}}}})
    path.write_text(content)
    probe = FakeProbe(54.0, 27.0)
    with caplog.at_level(logging.WARNING, logger="unet3d.runtime.cpu_probe"):
        info = configure_precision(AUTO, "CPU", cache_dir=tmp_path, host=fake_host(ZEN4, probe))
    assert info.policy_name == "mixed_bfloat16" and probe.calls == 1
    assert str(path) in caplog.text and "unreadable" in caplog.text
    assert read_cache(path)[host_key(ZEN4, "2.18.1", 2)]["probe"]["bf16_ms"] == 27.0
    assert not list(tmp_path.glob("*.tmp-*"))


def test_an_unwritable_cache_only_loses_the_cache(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    probe = FakeProbe(54.0, 27.0)
    with caplog.at_level(logging.WARNING, logger="unet3d.runtime.cpu_probe"):
        result, cached = cached_probe(blocker / CACHE_FILE, ZEN4, 2, "2.18.1", probe)
    assert result.bf16_ms == 27.0 and not cached and probe.calls == 1
    assert "cannot use the precision probe cache" in caplog.text


# ---- GPU and MLU --------------------------------------------------------------------------------


@pytest.mark.parametrize(("gpus", "policy"), [
    ([{"device_name": "NVIDIA H200", "compute_capability": (9, 0)}], "mixed_float16"),
    ([{"device_name": "Tesla V100", "compute_capability": (7, 0)}], "mixed_float16"),
    ([{"device_name": "Tesla P100", "compute_capability": (6, 0)}], "float32"),
    ([{"device_name": "A100", "compute_capability": (8, 0)},
      {"device_name": "GTX 1080", "compute_capability": (6, 1)}], "float32"),
    ([{"device_name": "AMD Instinct MI250"}], "float32"),  # no compute capability (ROCm)
    ([], "float32"),
])
def test_gpu_chooses_float16_only_with_tensor_cores(gpus, policy):
    info = configure_precision(AUTO, "GPU", host=fake_host(ZEN4, gpus=gpus))
    assert info.policy_name == policy
    assert info.loss_scale is (policy == "mixed_float16")
    assert info.params["precision.auto_choice"] == policy
    assert "precision.cpu" not in info.params


def test_gpu_reason_names_the_capability():
    choice = choose_gpu([{"device_name": "Tesla P4", "compute_capability": (6, 1)}])
    assert "6.1 < 7.0" in choice.reason and "Tesla P4 (compute capability 6.1)" in choice.line()


def test_mlu_keeps_mixed_float16():
    info = configure_precision(AUTO, "MLU", host=fake_host(ZEN4))
    assert info.policy_name == "mixed_float16" and info.loss_scale


# ---- resume -------------------------------------------------------------------------------------


def test_a_resume_keeps_the_recorded_policy_on_the_same_device(tmp_path, caplog):
    recorded = {"name": "auto", "policy": "auto", "resolved": "float32", "device": "CPU"}
    info = configure_precision(AUTO, "CPU", cache_dir=tmp_path, recorded=recorded,
                               host=fake_host(ZEN4))  # the probe would say bf16: not asked
    assert info.policy_name == "float32"
    assert info.params == {"precision.auto_choice": "float32"}
    assert info.identity("cpu") == {"resolved": "float32", "device": "CPU"}
    with caplog.at_level(logging.WARNING, logger="unet3d.runtime.precision"):
        moved = configure_precision(AUTO, "CPU", cache_dir=tmp_path,
                                    recorded={**recorded, "resolved": "mixed_float16",
                                              "device": "GPU"},
                                    host=fake_host(ZEN4, FakeProbe(54, 27)))
    assert moved.policy_name == "mixed_bfloat16" and "choosing again" in caplog.text


# ---- explicit bf16 on a slow CPU ----------------------------------------------------------------


def test_explicit_amp_on_a_slow_cpu_runs_and_warns_once(tmp_path, caplog):
    probe = FakeProbe(54.0, 92.0)
    host = fake_host(ZEN4, probe)
    with caplog.at_level(logging.WARNING, logger="unet3d.runtime.precision_auto"):
        info = configure_precision(AMP, "CPU", cache_dir=tmp_path, host=host)
        again = configure_precision({**AMP, "name": "bf16", "policy": "mixed_bfloat16"}, "CPU",
                                    cache_dir=tmp_path, host=host)
    assert info.policy_name == again.policy_name == "mixed_bfloat16"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "1.70x the time" in warnings[0] and "precision=amp" in warnings[0] \
        and "fp32 54.0 ms, bf16 92.0 ms" in warnings[0]
    assert probe.calls == 1  # the second job read the cache
    assert info.params["precision.probe_bf16_ms"] == "92.00"


def test_explicit_amp_on_a_fast_cpu_does_not_warn(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        configure_precision(AMP, "CPU", cache_dir=tmp_path,
                            host=fake_host(SAPPHIRE, FakeProbe(80, 12)))
    assert "slower than float32" not in caplog.text


def test_fp32_does_not_probe(tmp_path):
    info = configure_precision({**AMP, "name": "fp32", "policy": "float32"}, "CPU",
                               cache_dir=tmp_path, host=fake_host(ZEN4))
    assert info.policy_name == "float32" and info.params == {}


# ---- MLflow -------------------------------------------------------------------------------------


def test_the_choice_is_logged_as_mlflow_params(tmp_path):
    import mlflow

    from unet3d.tracking.tracker import Tracker

    info = configure_precision(AUTO, "CPU", cache_dir=tmp_path / "data",
                               host=fake_host(ZEN4, FakeProbe(54.0, 27.0)))
    tracking = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment_name": "probe"}
    tracker = Tracker(tracking, tmp_path)
    run_id = tracker.start(None, tmp_path / "run", run_name="auto")
    tracker.log_params(info.params)
    tracker.end()
    params = mlflow.MlflowClient(tracking["uri"]).get_run(run_id).data.params
    assert params["precision.auto_choice"] == "mixed_bfloat16"
    assert params["precision.probe_fp32_ms"] == "54.00"
    assert params["precision.probe_bf16_ms"] == "27.00"
    assert params["precision.cpu"] == "AMD EPYC 9R14"
    assert params["precision.cpu_bf16_flags"] == "avx512_bf16"
