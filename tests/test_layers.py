"""The layers of ``unet3d/``, read from its import statements: no circle between files and no
import that goes up a layer (``docs/architecture.md``, "Layers").

Every ``import`` / ``from ... import`` of every file counts, also those inside functions and
``if TYPE_CHECKING:`` blocks; relative imports are resolved, and ``from pkg import name`` points
at ``pkg/name.py`` when ``name`` is a submodule (else at ``pkg/__init__.py``). Dynamic imports
(``importlib``, Hydra's ``_target_``) are the plugin mechanism and are not read.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "unet3d"

#: The layers, top first; the one place the order is written. A unit is a top-level package
#: or module of ``unet3d`` (``unet3d`` itself: its ``__init__.py``). A unit may import any unit
#: of a lower layer and, inside its own layer, the units listed after it (never one before it):
#: the order of a layer's peers is their dependency order, so peers form no circle either.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("run", "sweep_callback"),          # entry points: the CLI and Hydra's sweep callback
    ("runner",),                        # one job: runtime, run folder, tracking, its mode
    ("serving",),                       # the served pyfunc (runs mode=predict), registration
    ("modes",),                         # one module (or package) per mode
    ("inference", "training", "evaluation"),
    ("tracking", "data", "model", "runtime", "runs"),
    ("config",),                        # settings and their checks, no TensorFlow
    ("errors", "unet3d"),
)

#: Upward imports that are known and scheduled to go: (importer, imported) -> why it is there.
#: Each must still exist (a fixed one is removed here), none may be added without a reason.
KNOWN_UPWARD: dict[tuple[str, str], str] = {}


def module_files(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``package_dir``."""
    root = package_dir.parent
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _existing(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its nearest enclosing module that is a file of the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that the file ``path`` (module ``name``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{path}: relative import above the package")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            module = _existing(target, modules)
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (file level)."""
    modules = module_files(package_dir)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def unit_of(module: str) -> str:
    """The layer unit of a module: ``unet3d.tracking.store`` -> ``tracking``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: dict[str, set[str]],
                   layers: Sequence[Sequence[str]]) -> tuple[list[str], list[str]]:
    """(imports that go up a layer or to an earlier peer, modules of no layer)."""
    place = {unit: (layer, position) for layer, units in enumerate(layers)
             for position, unit in enumerate(units)}
    unplaced = sorted({module for module in graph if unit_of(module) not in place})
    upward = []
    for module, imported in sorted(graph.items()):
        unit = unit_of(module)
        for other in sorted(imported):
            other_unit = unit_of(other)
            if unit == other_unit or unit not in place or other_unit not in place:
                continue
            if place[other_unit] < place[unit]:
                upward.append(f"{module} -> {other}")
    return upward, unplaced


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(PACKAGE)


def test_no_circle_between_files(graph: dict[str, set[str]]) -> None:
    found = circles(graph)
    assert not found, "import circles between files:\n" + "\n".join(
        " <-> ".join(group) for group in found)


def test_no_import_goes_up_a_layer(graph: dict[str, set[str]]) -> None:
    upward, unplaced = upward_imports(graph, LAYERS)
    assert not unplaced, f"modules of no layer (add their unit to LAYERS): {unplaced}"
    known = {f"{importer} -> {imported}" for importer, imported in KNOWN_UPWARD}
    unexpected = [item for item in upward if item not in known]
    assert not unexpected, "imports that go up a layer (or to an earlier peer):\n" + \
        "\n".join(unexpected)
    fixed = sorted(known - set(upward))
    assert not fixed, f"no longer upward, remove from KNOWN_UPWARD: {fixed}"


def mode_imports(graph: dict[str, set[str]], modes: Sequence[str]) -> list[str]:
    """Imports from one mode (``unet3d.modes.<name>``, a package with its submodules) of another."""
    def mode_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "modes" and parts[2] in modes else None

    return [f"{module} -> {other}" for module, imported in sorted(graph.items())
            for other in sorted(imported)
            if mode_of(module) and mode_of(other) and mode_of(module) != mode_of(other)]


def test_no_mode_imports_another_mode(graph: dict[str, set[str]]) -> None:
    """What two modes share lives in the modes' own helpers (``job``, ``build``, ``steps``)."""
    from unet3d.config import MODES

    found = mode_imports(graph, MODES)
    assert not found, "modes importing another mode:\n" + "\n".join(found)
    shared = {"unet3d.modes.train_and_evaluate": {"unet3d.modes.train", "unet3d.modes.job"},
              "unet3d.modes.benchmark.predict_target": {"unet3d.modes.benchmark.measure"}}
    assert mode_imports(shared, MODES) == [
        "unet3d.modes.train_and_evaluate -> unet3d.modes.train"]


def test_every_layer_unit_exists() -> None:
    units = {unit_of(module) for module in module_files(PACKAGE)}
    listed = [unit for layer in LAYERS for unit in layer]
    assert len(listed) == len(set(listed)), "a unit is listed twice"
    assert set(listed) == units, f"listed but absent: {sorted(set(listed) - units)}"


def _write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_the_walk_reads_every_kind_of_import(tmp_path: Path) -> None:
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/top.py": "from pkg import low\nfrom pkg.mid import helper\n",
        "pkg/mid/__init__.py": "from .core import value\n",
        "pkg/mid/core.py": "def f():\n    from ..low import thing\n    import pkg.low.deep\n",
        "pkg/mid/helper.py": "from . import core\nimport os\n",
        "pkg/low/__init__.py": "thing = 1\n",
        "pkg/low/deep.py": "from pkg.low import thing\n",
    })
    graph = import_graph(package)
    assert graph["pkg.top"] == {"pkg.low", "pkg.mid.helper"}
    assert graph["pkg.mid"] == {"pkg.mid.core"}
    assert graph["pkg.mid.core"] == {"pkg.low", "pkg.low.deep"}  # function-level, relative
    assert graph["pkg.mid.helper"] == {"pkg.mid.core"}
    assert graph["pkg.low.deep"] == {"pkg.low"}
    assert circles(graph) == []
    layers = (("top",), ("mid",), ("low",), ("pkg",))
    assert upward_imports(graph, layers) == ([], [])


def test_a_circle_and_an_upward_import_are_found(tmp_path: Path) -> None:
    package = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "",
        "pkg/a/one.py": "from pkg.b.two import x\n",
        "pkg/b/__init__.py": "",
        "pkg/b/two.py": "x = 1\ndef f():\n    from pkg.a import one\n",
        "pkg/c.py": "from pkg.b import two\n",
    })
    graph = import_graph(package)
    assert circles(graph) == [["pkg.a.one", "pkg.b.two"]]
    upward, unplaced = upward_imports(graph, (("a", "b"), ("pkg",)))
    assert upward == ["pkg.b.two -> pkg.a.one"]  # b is a's later peer: it may not import a
    assert unplaced == ["pkg.c"]
    # A lower layer importing a higher one is upward too (c below a and b).
    upward, unplaced = upward_imports(graph, (("a", "b"), ("c",), ("pkg",)))
    assert upward == ["pkg.b.two -> pkg.a.one", "pkg.c -> pkg.b.two"] and unplaced == []
    upward, _ = upward_imports(graph, (("c",), ("a", "b"), ("pkg",)))
    assert upward == ["pkg.b.two -> pkg.a.one"]  # c above b: c -> b is allowed
    upward, _ = upward_imports(graph, (("a",), ("b",), ("c",), ("pkg",)))
    assert upward == ["pkg.b.two -> pkg.a.one", "pkg.c -> pkg.b.two"]
