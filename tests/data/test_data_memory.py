"""``data.cache: auto`` (issue 32): the RAM-or-disk decision on faked memory figures, the memory
figures read from faked /proc and cgroup files, and the uncached (streamed) training input."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from unet3d.data.memory import (
    BYTES_PER_VOXEL,
    CACHE_MEMORY_FRACTION,
    FOREGROUND_BYTES,
    Memory,
    available_memory,
    cached_bytes,
    cgroup_headroom,
    decide_cache,
    meminfo_available,
)

GIB = 2**30


@pytest.fixture
def coordinate_files(tmp_path: Path) -> list[str]:
    """4 records of 20 x 18 x 12 whose channel 3 is the constant 100, 110, 120, 130."""
    from unet3d.data.tfrecord import write_record

    shape = (20, 18, 12)
    files = []
    for index in range(4):
        image = np.concatenate([np.indices(shape).transpose(1, 2, 3, 0) + 1,
                                np.full(shape + (1,), 100 + 10 * index)], axis=-1)
        path = tmp_path / f"case_{index}.tfrecord"
        write_record(path, {"case_id": f"case_{index}", "image": image.astype(np.uint8),
                            "label": np.zeros(shape, np.uint8), "mean": [0.0] * 4,
                            "std": [1.0] * 4})
        files.append(str(path))
    return files


def _records(folder: Path, shapes: list[tuple[int, int, int]], write: bool = True) -> list[str]:
    """Stand-in record files (``write``) and the preprocessing manifest giving their shapes."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = {}
    files = []
    for index, shape in enumerate(shapes):
        case_id = f"BraTS2021_{index:05d}"
        if write:
            (folder / f"{case_id}.tfrecord").write_bytes(b"x" * 10)
        cases[case_id] = {"shape": list(shape)}
        files.append(str(folder / f"{case_id}.tfrecord"))
    (folder / "preprocess_manifest.json").write_text(json.dumps({"version": 2, "cases": cases}))
    return files


def test_cached_bytes_count_five_bytes_per_stored_voxel(tmp_path: Path) -> None:
    files = _records(tmp_path / "records", [(10, 20, 30), (5, 5, 5)])
    per_case = [BYTES_PER_VOXEL * 6000 + FOREGROUND_BYTES, BYTES_PER_VOXEL * 125 + FOREGROUND_BYTES]
    assert cached_bytes(files) == sum(per_case)
    # A record the manifest does not know counts its size on disk.
    stray = tmp_path / "other" / "case.tfrecord"
    stray.parent.mkdir()
    stray.write_bytes(b"y" * 1000)
    assert cached_bytes([str(stray)]) == 1000 + FOREGROUND_BYTES


@pytest.mark.parametrize(("available_gib", "local", "cache"), [
    (64.0, 1, True),    # 1,000 cases of 17 MB = 15.9 GiB <= 0.5 x 64 GiB
    (24.0, 1, False),   # ... > 0.5 x 24 GiB: a 24 GB machine reads from disk
    (64.0, 4, False),   # 4 Horovod ranks on the machine: 8 GiB each
    (128.0, 4, True),
])
def test_auto_caches_only_when_the_cases_fit_in_the_share_of_memory(
        tmp_path: Path, available_gib: float, local: int, cache: bool) -> None:
    # BraTS 2021-like brain boxes: 1,000 cases of 140 x 170 x 140 voxels (16.7 MB each).
    files = _records(tmp_path, [(140, 170, 140)] * 1000, write=False)
    needed = cached_bytes(files)
    assert 15 * GIB < needed < 16 * GIB
    figures = Memory(int(available_gib * GIB), "MemAvailable")
    decision = decide_cache("auto", files, local_processes=local, memory=lambda: figures)
    assert decision.cache is cache
    assert decision.budget == int(available_gib * GIB * CACHE_MEMORY_FRACTION / local)
    line = decision.describe()
    assert line.startswith("data.cache=auto: " + ("caching the training cases in RAM" if cache
                           else "reading the training cases from disk on every pass"))
    assert "(1000 case(s), 15." in line and f"{available_gib:.2f} GiB available (MemAvailable)" \
        in line and f"/ {local} local process(es)" in line


def test_true_and_false_are_obeyed_and_unknown_memory_reads_from_disk(tmp_path: Path) -> None:
    files = _records(tmp_path, [(8, 8, 8)])

    def no_probe() -> Memory:
        raise AssertionError("memory is only read for auto")

    assert decide_cache(True, files, memory=no_probe).cache is True
    assert decide_cache(False, files, memory=no_probe).cache is False
    unknown = decide_cache("auto", files, memory=lambda: Memory(None, "no /proc/meminfo"))
    assert unknown.cache is False and "available memory unknown" in unknown.describe()
    with pytest.raises(ValueError, match=r"^data\.cache: must be true, false or auto, got 'yes'"):
        decide_cache("yes", files)
    with pytest.raises(ValueError, match=r"^data\.cache: must be true, false or auto, got 1$"):
        decide_cache(1, files)


def _cgroup_tree(tmp_path: Path, version: int, limit: str, usage: int, inactive: int) -> Path:
    root = tmp_path / "cgroup"
    if version == 2:
        folder = root / "job" / "step"
        folder.mkdir(parents=True)
        (folder / "memory.max").write_text(limit + "\n")
        (folder / "memory.current").write_text(f"{usage}\n")
        (folder / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\n")
        (root / "job" / "memory.max").write_text("max\n")
        (tmp_path / "self_cgroup").write_text("0::/job/step\n")
    else:
        folder = root / "memory" / "job"
        folder.mkdir(parents=True)
        (folder / "memory.limit_in_bytes").write_text(limit + "\n")
        (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
        (folder / "memory.stat").write_text(f"total_inactive_file {inactive}\n")
        (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
        (tmp_path / "self_cgroup").write_text("4:memory:/job\n2:cpu:/\n")
    return root


@pytest.mark.parametrize("version", [1, 2])
def test_the_cgroup_limit_bounds_the_available_memory(tmp_path: Path, version: int) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       32000000 kB\nMemAvailable:   30000000 kB\n")
    assert meminfo_available(meminfo) == 30000000 * 1024
    # An 8 GiB limit with 3 GiB used, 1 GiB of it reclaimable page cache: 6 GiB left.
    root = _cgroup_tree(tmp_path, version, str(8 * GIB), 3 * GIB, 1 * GIB)
    headroom = cgroup_headroom(tmp_path / "self_cgroup", root)
    assert headroom is not None and headroom[0] == 6 * GIB
    figures = available_memory(meminfo, tmp_path / "self_cgroup", root)
    assert figures.available == 6 * GIB and figures.source.startswith("cgroup limit ")
    # Without a limit (max / the v1 "unlimited" number) MemAvailable decides.
    unlimited = tmp_path / "unlimited"
    unlimited.mkdir()
    root = _cgroup_tree(unlimited, version, "max" if version == 2 else "9223372036854771712",
                        GIB, 0)
    assert cgroup_headroom(unlimited / "self_cgroup", root) is None
    figures = available_memory(meminfo, unlimited / "self_cgroup", root)
    assert figures == Memory(30000000 * 1024, "MemAvailable")


def test_no_proc_files_fall_back_to_free_pages(tmp_path: Path) -> None:
    figures = available_memory(tmp_path / "none", tmp_path / "none", tmp_path / "none")
    assert figures.source == "free physical pages" and figures.available > 0


def test_uncached_input_reads_every_case_once_per_pass_and_repeats_itself(
        coordinate_files: list[str], caplog: pytest.LogCaptureFixture) -> None:
    from unet3d.data.pipeline import train_dataset

    def batches() -> list[tuple[np.ndarray, np.ndarray]]:
        dataset = train_dataset(coordinate_files, [8, 8, 8], 2, False, 5, 0.0, 4, False)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(6)]

    with caplog.at_level(logging.INFO, logger="unet3d.data.pipeline"):
        first = batches()
    assert "data.cache=false: reading the training cases from disk on every pass (4 case(s)" \
        in caplog.text
    markers = [int(round(image[sample, ..., 3].max())) for image, _ in first for sample in (0, 1)]
    for start in (0, 4, 8):  # three passes of 4 cases
        assert sorted(markers[start:start + 4]) == [100, 110, 120, 130]
    assert markers[:4] != markers[4:8] or markers[4:8] != markers[8:12]  # reshuffled per pass
    for (x1, y1), (x2, y2) in zip(first, batches(), strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_auto_logs_its_decision_and_caches_small_cases(coordinate_files: list[str],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    from unet3d.data.pipeline import train_dataset

    with caplog.at_level(logging.INFO, logger="unet3d.data.pipeline"):
        dataset = train_dataset(coordinate_files, [8, 8, 8], 2, False, 5, 0.0, 4, "auto")
        next(iter(dataset))
    assert "data.cache=auto: caching the training cases in RAM (4 case(s)" in caplog.text
    assert "GiB available (" in caplog.text
