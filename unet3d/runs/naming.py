"""Names of the job folders of a ``--multirun`` sweep: one flat, safe folder name per job.

Hydra's own ``${hydra.job.override_dirname}`` joins the job's overrides as typed, so a
path-valued override (``data.raw_dir=/abs/path/to/data``) puts path separators into the name and
the job lands several folders deep. :func:`job_dirname` builds the same kind of name, but never
with a path separator, whatever the overrides::

    ["fold=1", "data=brats2019", "data.raw_dir=/abs/path/to/data"]
    -> "data.raw_dir=data-3f9c1e,data=brats2019,fold=1"

Rules (``conf/hydra/default.yaml`` uses it as the ``${unet3d_job_dirname:...}`` resolver):

- overrides are sorted (as Hydra does) and joined with ``item_sep`` (","); keys in
  ``exclude_keys`` (compared without a ``+``/``++``/``~`` prefix or ``@package``, as Hydra
  does) are left out;
- a value holding "/" or "\\" is replaced by its last path component and a hash
  (``<component>-<6 hex digits>``), a value longer than ``max_value_length`` by its beginning
  and a hash;
- characters unsafe in file names (``<>:"/\\|?*``, whitespace, control characters) become
  "_"; a value changed that way also gets the hash, so two different values never share a name;
- a name longer than ``max_length`` is cut and ends with ``-<hash of the whole name>``.

The name depends only on the overrides: the same overrides give the same name, so
``resume=true`` on a rerun of a sweep (same ``hydra.sweep.dir``) finds the same folders.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

#: Name of the OmegaConf resolver that calls :func:`job_dirname` (registered by unet3d.run).
RESOLVER_NAME = "unet3d_job_dirname"
#: Values longer than this are shortened to a readable beginning plus a hash.
MAX_VALUE_LENGTH = 40
#: Longest folder name :func:`job_dirname` returns (Hydra prefixes ``<job num>_``).
MAX_NAME_LENGTH = 120
#: Hex digits of the hash that keeps shortened values and cut names distinct.
HASH_LENGTH = 6
#: Characters of the readable part of a shortened value.
_READABLE_LENGTH = 24

_SEPARATORS = re.compile(r"[/\\]")
_UNSAFE = re.compile(r'[<>:"/\\|?*\s\x00-\x1f\x7f]')
_PREFIXES = ("++", "+", "~")
_BRACKETS = "'\"[](){} "


def short_hash(text: str, length: int = HASH_LENGTH) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8).

    Args:
        text: any string.
        length: number of hex digits (1 to 64).

    Returns:
        Lower-case hex digits.
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def sanitize(text: str) -> str:
    """``text`` with every character unsafe in a file name replaced by "_".

    Args:
        text: a key or value of an override.

    Returns:
        The text without path separators, ``<>:"|?*``, whitespace or control characters.
    """
    return _UNSAFE.sub("_", text)


def _key_or_group(key: str) -> str:
    """The key as Hydra compares it with ``exclude_keys``: no prefix, no ``@package``."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return key.split("@", 1)[0].strip()


def _readable_value(value: str, max_value_length: int) -> str:
    """A value as it may appear in a folder name (see the module doc)."""
    if _SEPARATORS.search(value):
        parts = [part.strip(_BRACKETS) for part in _SEPARATORS.split(value)]
        readable = next((part for part in reversed(parts) if part), "") or "path"
        readable = sanitize(readable)[:_READABLE_LENGTH]
        return f"{readable}-{short_hash(value)}"
    if len(value) > max_value_length:
        return f"{sanitize(value[:_READABLE_LENGTH])}-{short_hash(value)}"
    safe = sanitize(value)
    return safe if safe == value else f"{safe}-{short_hash(value)}"


def job_dirname(
    overrides: Iterable[str] | None,
    exclude_keys: Iterable[str] | None = (),
    item_sep: str = ",",
    kv_sep: str = "=",
    max_value_length: int = MAX_VALUE_LENGTH,
    max_length: int = MAX_NAME_LENGTH,
) -> str:
    """A job's folder name from its task overrides, without any path separator.

    Used in ``conf/hydra/default.yaml`` as ``hydra.sweep.subdir``::

        ${hydra.job.num}_${unet3d_job_dirname:${hydra.overrides.task},
                                              ${hydra.job.config.override_dirname.exclude_keys}}

    (on one line); OmegaConf passes both lists as ``ListConfig`` (any iterable of strings
    works).

    Args:
        overrides: the job's overrides as typed (``hydra.overrides.task``), e.g.
            ``["fold=0", "data.raw_dir=/data/brats"]``; None or empty gives "".
        exclude_keys: keys left out of the name (e.g. ``hydra.sweep.dir``, ``resume``).
        item_sep: separator between overrides.
        kv_sep: separator between a key and its value.
        max_value_length: values longer than this are shortened (beginning plus hash).
        max_length: the longest name returned; a longer one is cut and ends with a hash.

    Returns:
        The folder name (possibly ""), the same for the same overrides in any order.

    Raises:
        ValueError: ``max_length`` is too small to hold a hash (< 2 * ``HASH_LENGTH``).
    """
    if max_length < 2 * HASH_LENGTH:
        raise ValueError(f"max_length: must be at least {2 * HASH_LENGTH}, got {max_length}")
    excluded = {str(key) for key in (exclude_keys or ())}
    lines = []
    for override in overrides or ():
        line = str(override).strip()
        key, has_value, value = line.partition("=")
        key = key.strip()
        if not key or _key_or_group(key) in excluded:
            continue
        lines.append((line, key, has_value, value.strip()))
    lines.sort(key=lambda item: item[0])
    items = []
    for _, key, has_value, value in lines:
        safe_key = sanitize(key)
        if has_value:
            items.append(f"{safe_key}{kv_sep}{_readable_value(value, max_value_length)}")
        else:
            items.append(safe_key)
    name = sanitize(item_sep.join(items))
    if len(name) > max_length:
        name = f"{name[: max_length - HASH_LENGTH - 1]}-{short_hash(name)}"
    return name


def parse_override(override: str) -> tuple[str, str]:
    """Split a Hydra override "key=value" ("+key=", "++key=", "~key" too) into (key, value)."""
    text = str(override).strip()
    key, _, value = text.partition("=")
    return key.lstrip("+~").strip(), value.strip()
