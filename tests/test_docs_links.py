"""Every relative link in README.md, docs/ and benchmarks/README.md resolves.

A link is ``[text](target)`` outside fenced code blocks; ``http(s)://`` and ``mailto:`` links
are not followed (no network in tests). A target names a file or folder relative to the
document; ``#anchor`` must be a heading of the target Markdown file, slugged as GitHub does
(lower case, characters other than letters, digits, spaces, ``-`` and ``_`` dropped, spaces
to ``-``, ``-1``, ``-2`` ... for repeated headings).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md",
                    *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _without_code(text: str) -> str:
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    heading = re.sub(r"[`*]", "", heading.strip().lower())
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The GitHub anchors of a Markdown file's headings."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    result = set()
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", text, flags=re.M):
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def links(path: Path) -> list[str]:
    return [target for target in LINK.findall(_without_code(path.read_text()))
            if not re.match(r"[a-z]+:", target)]


def test_slugs_follow_github() -> None:
    assert _slug("Default job (README's first command)") == "default-job-readmes-first-command"
    assert _slug("From a run in `mlflow ui` back to its model") == \
        "from-a-run-in-mlflow-ui-back-to-its-model"
    assert _slug("Segmentation quality: what each feature buys") == \
        "segmentation-quality-what-each-feature-buys"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(document: Path) -> None:
    broken = []
    for target in links(document):
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)
