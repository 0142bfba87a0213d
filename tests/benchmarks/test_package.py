"""benchmarks/ is a package: every script runs as ``python -m benchmarks[.studies].<name>``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(path for folder in ("benchmarks", "benchmarks/studies")
                 for path in (ROOT / folder).glob("[!_]*.py"))
DOCUMENTS = [ROOT / "README.md", ROOT / "benchmarks" / "README.md",
             ROOT / "benchmarks" / "run_all.sh", *sorted((ROOT / "docs").glob("*.md"))]


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: _module(path))
def test_each_script_is_a_module_of_the_package_without_sys_path_loading(script) -> None:
    assert importlib.util.find_spec(_module(script)) is not None
    source = script.read_text()
    assert 'if __name__ == "__main__":' in source
    assert "sys.path" not in source
    # script-to-script imports go through the package
    assert not re.search(r"^\s*from _(?!_)\w+ import", source, re.M)


def test_documented_commands_use_the_module_form() -> None:
    stale = [f"{path.relative_to(ROOT)}: {match}" for path in DOCUMENTS + SCRIPTS
             for match in re.findall(r"python3? benchmarks/\S+\.py", path.read_text())]
    assert not stale
