"""Components from config: a group's ``_target_`` located, called, and its contract enforced.

A component (the model, the loss, the learning-rate schedule, the data set) is a class or
factory that a config group names with ``_target_`` (Hydra's convention); the group's other
keys are its arguments. ``target_problem`` checks a ``_target_`` at start without running any
of the user's code; ``instantiate`` imports and calls it when the job builds the component.
Every failure is one ``ConfigError`` line that starts with ``<group>._target_``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Collection, Mapping
from importlib.machinery import ModuleSpec, all_suffixes
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from unet3d.errors import ConfigError, Unet3dError

_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def one_line(error: BaseException) -> str:
    """``Type: message`` of an exception on one line (whitespace collapsed, 300 characters)."""
    text = " ".join(str(error).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def check_contract(condition: bool, group: str, message: Callable[[], str] | str) -> None:
    """Raise ``ConfigError("<group>._target_: <message>")`` when ``condition`` is false.

    Args:
        condition: whether the component meets this part of its contract.
        group: the config group (``model``, ``loss``, ``lr_schedule``, ``data``).
        message: what is wrong (a callable is only called when the condition fails).
    """
    if not condition:
        text = message() if callable(message) else message
        raise ConfigError(f"{group}._target_: {text}")


def target_problem(target: Any) -> str | None:
    """What is wrong with a ``_target_``, found without executing any module; None if nothing.

    The modules of the dotted path are looked up on the import path (no import), and the
    attribute after the last module is looked up in that module's source (its top-level
    definitions, assignments and imports). A module that defines names dynamically
    (``__getattr__``, ``import *``) or is not Python source is given the benefit of the doubt.

    Args:
        target: the value of ``<group>._target_``.
    """
    if not isinstance(target, str) or not _DOTTED_PATH.fullmatch(target):
        return f"must be a dotted import path such as package.module.Class, got {target!r}"
    parts = target.split(".")
    spec = _find_spec(parts[0], None)
    if spec is None:
        return (f"cannot import {target!r}: no module named {parts[0]!r} (install it, or add "
                f"its folder to PYTHONPATH)")
    found = 1
    while found < len(parts) and spec.submodule_search_locations is not None:
        child = _find_spec(".".join(parts[:found + 1]), list(spec.submodule_search_locations))
        if child is None:
            break
        spec, found = child, found + 1
    if found == len(parts):
        return None
    module, attribute = ".".join(parts[:found]), parts[found]
    names = _defined_names(spec)
    if names is not None and attribute not in names:
        kind = "package" if spec.submodule_search_locations is not None else "module"
        return (f"cannot import {target!r}: {kind} {module} ({spec.origin or 'namespace'}) "
                f"has no {attribute!r}")
    return None


def _find_spec(name: str, path: list[str] | None) -> ModuleSpec | None:
    """The spec of a module without importing it (nor, for submodules, its parents).

    A top-level module is found by the import system's finders; a submodule is looked up in
    its parent's folders (``path``): a package (``<name>/__init__.py``), a module file, or a
    namespace package (plain folders).
    """
    loaded = sys.modules.get(name)
    if loaded is not None and getattr(loaded, "__spec__", None) is not None:
        return loaded.__spec__
    if path is None:
        try:
            return importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
    last = name.rsplit(".", 1)[-1]
    portions = []
    for location in path:
        folder = Path(location) / last
        if (folder / "__init__.py").is_file():
            return importlib.util.spec_from_file_location(
                name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        for suffix in all_suffixes():
            file = Path(location) / f"{last}{suffix}"
            if file.is_file():
                return importlib.util.spec_from_file_location(name, file)
        if folder.is_dir():
            portions.append(str(folder))
    if not portions:
        return None
    spec = ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = portions
    return spec


def _defined_names(spec: ModuleSpec) -> set[str] | None:
    """Top-level names of a module's source; None when they cannot be known statically."""
    origin = spec.origin
    if spec.submodule_search_locations is not None and origin in (None, "namespace"):
        return set()  # a namespace package defines nothing itself
    if not origin or not origin.endswith(".py"):
        return None
    try:
        with open(origin, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), filename=origin)
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    names: set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(name.id for name in ast.walk(target) if isinstance(name, ast.Name))
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            for field in ("body", "orelse", "finalbody", "handlers"):
                statements.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            statements.extend(node.body)
    return None if "__getattr__" in names else names


def locate(target: str, key: str) -> Any:
    """Import the object named by a dotted path (``package.module.Class[.attribute]``).

    Args:
        target: the dotted path of ``_target_``.
        key: the config key named in errors (``model._target_``).

    Raises:
        ConfigError: no such module or attribute, importing the module failed, or the object
            is not callable.
    """
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        module_name = ".".join(parts[:end])
        try:
            found: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            missing = error.name or ""
            if module_name == missing or module_name.startswith(f"{missing}."):
                continue  # no module of this name: the rest may be attributes
            raise ConfigError(f"{key}: cannot import {target!r}: importing {module_name} "
                              f"failed: {one_line(error)}") from None
        except Exception as error:  # noqa: BLE001 - the user's module fails on import
            raise ConfigError(f"{key}: cannot import {target!r}: importing {module_name} "
                              f"failed: {one_line(error)}") from None
        for attribute in parts[end:]:
            if not hasattr(found, attribute):
                raise ConfigError(f"{key}: cannot import {target!r}: {module_name} has no "
                                  f"attribute {attribute!r}")
            found = getattr(found, attribute)
        if not callable(found):
            raise ConfigError(f"{key}: {target!r} is a {type(found).__name__}, not a class or "
                              f"factory")
        return found
    raise ConfigError(f"{key}: cannot import {target!r}: no module named {parts[0]!r}")


def instantiate(node: Mapping[str, Any] | DictConfig, group: str,
                exclude: Collection[str] = (), **runtime_arguments: Any) -> Any:
    """Build the component that a config group names with ``_target_`` (Hydra's convention).

    The target is called with the group's other keys as keyword arguments (resolved, plain
    Python containers; nested nodes with their own ``_target_`` are built first), plus
    ``runtime_arguments``.

    Args:
        node: the config group (``cfg.model``, ``cfg.loss``, ...).
        group: its key in the config, named in errors (``model``).
        exclude: keys of the group that are not arguments (the framework's own keys).
        **runtime_arguments: arguments known only at run time (``total_steps``).

    Returns:
        What the target returns.

    Raises:
        ConfigError: one line: ``<group>._target_`` is missing or cannot be imported, or the
            call failed (its exception type and message); a ``Unet3dError`` raised by the
            target is raised as it is.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    if OmegaConf.is_config(node):
        arguments = OmegaConf.to_container(node, resolve=True)
    else:
        arguments = dict(node)
    target = arguments.pop("_target_", None)
    key = f"{group}._target_"
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}: missing; name the class or factory of the {group} "
                          f"(see docs/contracts.md)")
    locate(target, key)
    for name in exclude:
        arguments.pop(name, None)
    try:
        return hydra_instantiate({"_target_": target, **arguments}, _convert_="all",
                                 **runtime_arguments)
    except InstantiationException as error:
        cause = _root_cause(error)
        if isinstance(cause, Unet3dError):
            raise cause from None
        raise ConfigError(f"{key}: {target}(...) failed: {one_line(cause)}") from None
    except Unet3dError:
        raise
    except Exception as error:  # noqa: BLE001 - anything the user's component raises
        raise ConfigError(f"{key}: {target}(...) failed: {one_line(error)}") from None


def _root_cause(error: BaseException) -> BaseException:
    from hydra.errors import InstantiationException

    while isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return error
