"""Values for MLflow: a config as dotted params, valid keys, errors as one line or full text."""

from __future__ import annotations

import json
import re
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

#: MLflow's longest metric/param/tag key (mlflow/utils/validation.py, 3.x).
MAX_KEY_LENGTH = 250

_INVALID_NAME_CHARACTERS = re.compile(r"[^/\w.\- ]")


def flatten_config(config: Any, exclude: Sequence[str] = ()) -> dict[str, str]:
    """Flatten a config into dotted keys with string values, resolving interpolations.

    Args:
        config: an OmegaConf container or a plain mapping.
        exclude: dotted keys (e.g. "hydra") left out with everything under them.

    Returns:
        {dotted key: value as text}. Lists become JSON strings, empty mappings "{}", None
        "None". A value whose interpolation cannot be resolved (e.g. `${hydra:...}` outside a
        Hydra job, or a missing `???`) is kept verbatim.
    """
    flat: dict[str, str] = {}
    _flatten_into(config, "", frozenset(exclude), flat)
    return flat


def _flatten_into(node: Any, key: str, exclude: frozenset[str], flat: dict[str, str]) -> None:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, DictConfig | Mapping):
        if len(node) == 0 and key:
            flat[key] = "{}"
        raw: Any = None
        for child_key in list(node.keys()):
            child_path = f"{key}.{child_key}" if key else str(child_key)
            if child_path in exclude:
                continue
            try:
                child = node[child_key]
            except Exception:  # noqa: BLE001 - unresolvable: log the raw value
                if raw is None:
                    raw = OmegaConf.to_container(node, resolve=False)
                flat[child_path] = str(raw.get(child_key))
                continue
            _flatten_into(child, child_path, exclude, flat)
    elif isinstance(node, ListConfig):
        try:
            values = OmegaConf.to_container(node, resolve=True)
        except Exception:  # noqa: BLE001
            values = OmegaConf.to_container(node, resolve=False)
        flat[key] = json.dumps(values, default=str)
    elif isinstance(node, list | tuple):
        flat[key] = json.dumps(list(node), default=str)
    else:
        flat[key] = str(node)


def sanitize_name(name: str) -> str:
    """Make `name` a valid MLflow metric/param key (invalid characters become `_`)."""
    cleaned = _INVALID_NAME_CHARACTERS.sub("_", str(name)).strip("/") or "_"
    cleaned = re.sub(r"/+", "/", cleaned)
    return cleaned[:MAX_KEY_LENGTH]


def config_yaml(config: Any) -> str:
    """The config as YAML, interpolations resolved where they resolve."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(config, DictConfig | ListConfig):
        try:
            return OmegaConf.to_yaml(config, resolve=True)
        except Exception:  # noqa: BLE001
            return OmegaConf.to_yaml(config, resolve=False)
    return OmegaConf.to_yaml(OmegaConf.create(config))


def error_line(error: str | BaseException) -> str:
    """One line for an error: "Type: first line of the message", or a text's first line."""
    if isinstance(error, BaseException):
        message = str(error).strip().splitlines()
        return f"{type(error).__name__}: {message[0]}" if message else type(error).__name__
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else "error"


def describe_error(error: str | BaseException) -> str:
    """The full text of an error: its traceback for an exception, else the text itself."""
    if isinstance(error, BaseException):
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return str(error)
