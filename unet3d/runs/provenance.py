"""Provenance of a run: the source code version it ran (git commit, branch, local changes)."""

from __future__ import annotations

import os
import subprocess


def git_tags(repo_dir: str | os.PathLike) -> dict[str, str]:
    """Return the git state of `repo_dir` as MLflow tags ({} without git or outside a repo).

    Args:
        repo_dir: a folder inside the repository (the project root).

    Returns:
        `mlflow.source.git.commit` (the HEAD commit), `mlflow.source.git.branch` (absent on a
        detached HEAD) and `git_dirty` ("true"/"false": uncommitted changes to tracked files).
    """

    def git(*arguments: str) -> str | None:
        try:
            completed = subprocess.run(
                ["git", "-C", str(repo_dir), *arguments],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return completed.stdout.strip() if completed.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    tags = {"mlflow.source.git.commit": commit}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    status = git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        tags["git_dirty"] = "true" if status else "false"
    return tags
