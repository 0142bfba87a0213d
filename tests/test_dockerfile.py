"""The Dockerfile, checked by reading it (no Docker engine here).

Parses the instructions (continuation lines and ``RUN <<NAME`` heredocs joined) and checks what
a build would trip over or silently get wrong: files it copies, the base image's TensorFlow
against setup.cfg's pin, the project install (editable, no second TensorFlow), Horovod built
with the same flags as README and CI, a non-root user, volumes and the entry point.
"""

from __future__ import annotations

import configparser
import fnmatch
import json
import re
import shlex
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
HOROVOD_SCRIPT = ROOT / ".ci" / "install_horovod.sh"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; heredoc bodies are appended to their RUN's arguments."""
    instructions: list[tuple[str, str]] = []
    lines = iter(text.splitlines())
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        while stripped.endswith("\\"):
            following = next(lines).strip()
            if following.startswith("#"):
                continue
            stripped = stripped[:-1].rstrip() + " " + following
        keyword, _, arguments = stripped.partition(" ")
        heredoc = re.search(r"<<-?'?\"?(\w+)'?\"?", arguments) if keyword == "RUN" else None
        if heredoc:
            body = []
            for body_line in lines:
                if body_line.strip() == heredoc.group(1):
                    break
                body.append(body_line)
            arguments = arguments + "\n" + "\n".join(body)
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def _all(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in instructions if name == keyword]


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _horovod_flags(text: str) -> set[str]:
    """HOROVOD_WITH*/WITHOUT* build flags named in a text, e.g. {"HOROVOD_WITH_GLOO=1"}."""
    return set(re.findall(r"\b(HOROVOD_WITH(?:OUT)?_[A-Z]+=1)\b", text))


def test_parser_handles_continuations_and_heredocs() -> None:
    parsed = parse_dockerfile("FROM a\nRUN x \\\n  # note\n  && y\nRUN <<'EOF'\nset -e\nz\nEOF\n"
                              "USER u\n")
    assert parsed == [("FROM", "a"), ("RUN", "x && y"), ("RUN", "<<'EOF'\nset -e\nz"),
                      ("USER", "u")]


def test_base_image_is_a_build_argument_matching_the_tensorflow_pin() -> None:
    text = DOCKERFILE.read_text()
    before_from = text[: text.index("\nFROM ")]
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", before_from, re.MULTILINE)
    assert match, "ARG BASE_IMAGE=... must come before FROM"
    image = match.group(1)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.MULTILINE)
    assert image.startswith("tensorflow/tensorflow:") and image.endswith("-gpu")
    version = Version(image.split(":")[1].removesuffix("-gpu"))
    extras = _setup_cfg()["options.extras_require"]
    pins = {name: re.search(r"tensorflow\S*?([<>=!,.\d]+)$", extras[name].strip()).group(1)
            for name in ("cpu", "gpu")}
    for pin in pins.values():
        assert version in SpecifierSet(pin), f"{image}: TensorFlow {version} outside {pin}"
    # The MLU variant is documented as a BASE_IMAGE switch, as the seed builds FROM Cambricon's.
    assert re.search(r"--build-arg BASE_IMAGE=\S*cambricon", text, re.IGNORECASE)


def _dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_copied_file_exists_and_is_in_the_build_context(instructions) -> None:
    copies = _all(instructions, "COPY")
    assert copies
    ignored = _dockerignore_patterns()
    for arguments in copies:
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources = words[:-1]
        assert sources, arguments
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"COPY {source}: not in the repository"
            top = source.rstrip("/").split("/")[0]
            for pattern in ignored:
                assert not fnmatch.fnmatch(source.rstrip("/"), pattern) and not fnmatch.fnmatch(
                    top, pattern), f"COPY {source}: excluded by .dockerignore ({pattern})"


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = set(_dockerignore_patterns())
    for name in (".git", ".venv", "outputs", "data", "mlruns", "mlartifacts", "mlflow.db"):
        assert name in patterns, f".dockerignore should exclude {name}"


def test_project_is_installed_editable_without_a_second_tensorflow(instructions) -> None:
    installs = [arguments for arguments in _all(instructions, "RUN")
                if re.search(r"pip install -e ", arguments)]
    assert len(installs) == 1, installs
    match = re.search(r"pip install -e \"?\.(\[([\w,]+)\])?\"?", installs[0])
    assert match, installs[0]
    extras = set((match.group(2) or "").split(",")) - {""}
    known = set(_setup_cfg()["options.extras_require"])
    assert extras <= known, extras - known
    # cpu / gpu / test pull TensorFlow wheels over the base image's; horovod is compiled below.
    assert not extras & {"cpu", "gpu", "test", "horovod"}, extras
    # README installs the project the same way (editable, so conf/ is found beside unet3d/).
    readme = (ROOT / "README.md").read_text()
    assert 'pip install -e ".[' in readme


def test_horovod_is_built_with_the_same_flags_as_readme_and_ci(instructions) -> None:
    script = HOROVOD_SCRIPT.read_text()
    script_flags = {flag for flag in re.findall(r"export (HOROVOD_\w+=1)", script)}
    assert script_flags == {"HOROVOD_WITH_TENSORFLOW=1", "HOROVOD_WITH_GLOO=1",
                            "HOROVOD_WITHOUT_MPI=1", "HOROVOD_WITHOUT_PYTORCH=1",
                            "HOROVOD_WITHOUT_MXNET=1"}
    assert "--no-build-isolation" in script and 'HOROVOD_VERSION:-0.28.1' in script
    # The Dockerfile copies and runs that very script (so the flags cannot drift) and sets no
    # HOROVOD_WITH*/WITHOUT* flag of its own; it only adds NCCL for GPU all-reduce.
    text = DOCKERFILE.read_text()
    assert any(".ci/install_horovod.sh" in arguments for arguments in _all(instructions, "COPY"))
    runs = "\n".join(_all(instructions, "RUN"))
    assert "bash .ci/install_horovod.sh" in runs
    assert not _horovod_flags(text), _horovod_flags(text)
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in runs
    # README and setup.cfg document the same flags.
    for document in (ROOT / "README.md", ROOT / "setup.cfg"):
        assert _horovod_flags(document.read_text()) == script_flags, document.name
    horovod_pin = _setup_cfg()["options.extras_require"]["horovod"].strip()
    assert horovod_pin == "horovod==0.28.1"


def test_runs_as_a_non_root_user(instructions) -> None:
    users = _all(instructions, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0")
    runs = "\n".join(_all(instructions, "RUN"))
    assert re.search(rf"useradd .*\b{re.escape(users[-1].split(':')[0])}\b", runs)
    # Instructions after the last USER run unprivileged: no package installs there.
    last_user = max(i for i, (name, _) in enumerate(instructions) if name == "USER")
    assert not any(name == "RUN" for name, _ in instructions[last_user:])


def test_outputs_and_mlflow_store_are_volumes(instructions) -> None:
    volumes: list[str] = []
    for arguments in _all(instructions, "VOLUME"):
        volumes += json.loads(arguments) if arguments.startswith("[") else arguments.split()
    workdirs = _all(instructions, "WORKDIR")
    root = workdirs[-1]
    assert root in volumes and f"{root}/outputs" in volumes
    environment = " ".join(_all(instructions, "ENV"))
    # paths.root_dir (MLflow store, mlartifacts/, data/) is that volume.
    assert f"UNET3D_ROOT={root}" in environment


def test_entrypoint_is_the_runner(instructions) -> None:
    (entrypoint,) = _all(instructions, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python", "-m", "unet3d.run"]
