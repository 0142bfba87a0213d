"""What the command line answers without running a job: ``--help``, ``--cfg``, completion.

Hydra (1.3) answers ``--help`` by listing every config group twice, and a shell-completion query
by listing the groups of the word being completed; each listing builds a new config repository
(``ConfigLoaderImpl._parse_overrides_and_create_caching_repo``): a deep copy of Hydra's whole
ConfigStore and, for completion, a new read of ``conf/config.yaml``. That is 148 copies for
``--help`` (3 s on a quiet 2-core host) and 36 copies and reads for completing an empty word.
A process that only answers (it composes nothing else and writes nothing) needs one repository
per config name and overrides: `answers_at_once` makes Hydra build it once. The answers stay
Hydra's own (``tests/test_command_line.py`` compares them); a job never takes this path, and
importing this module imports nothing of Hydra.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

#: Hydra's flags that answer and exit: help, the composed config, info, shell completion.
ANSWER_FLAGS = frozenset({"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i",
                          "--shell-completion", "-sc", "--version"})


def answers_at_once(arguments: Sequence[str]) -> bool:
    """Whether the command line only asks Hydra for an answer; if so, let Hydra build its config
    repository once per query (see the module doc).

    Args:
        arguments: the command line after the program name (``sys.argv[1:]``).

    Returns:
        True when ``arguments`` hold one of ``ANSWER_FLAGS``: no job runs.
    """
    if not any(argument.split("=", 1)[0] in ANSWER_FLAGS for argument in arguments):
        return False
    share_config_repositories()
    return True


def share_config_repositories() -> bool:
    """Make Hydra's config loader build one config repository per (config name, overrides)
    in this process, instead of one per listing (idempotent).

    Returns:
        False when this Hydra has no such step (another version): it answers as it is.
    """
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    create: Callable[..., Any] | None = getattr(
        ConfigLoaderImpl, "_parse_overrides_and_create_caching_repo", None)
    if create is None:
        return False
    if getattr(create, "shared", False):
        return True
    made: dict[tuple[int, str | None, tuple[str, ...]], Any] = {}

    def once(loader: Any, config_name: str | None, overrides: list[str]) -> Any:
        key = (id(loader), config_name, tuple(overrides))
        if key not in made:
            made[key] = create(loader, config_name, overrides)
        return made[key]

    once.shared = True  # type: ignore[attr-defined]
    ConfigLoaderImpl._parse_overrides_and_create_caching_repo = once  # type: ignore[method-assign]
    return True
