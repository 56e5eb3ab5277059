"""The README and docs/ link to each other: every relative link and #anchor must resolve.

The README is short and points into docs/ for everything else, so a renamed heading or a
moved file would silently strand a reader; these tests name the file, the line and the
link that no longer lands. Anchors are computed the way GitHub renders headings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.mirror_helpers import REPO

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class Link:
    source: Path
    where: str  # file:line, relative to the checkout
    target: str

    def __str__(self) -> str:
        return f"{self.where}: {self.target}"


def documents(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def without_code(text: str) -> str:
    """`text` with fenced blocks and code spans blanked, line numbers kept."""
    text = FENCE.sub(lambda match: "\n" * match.group(0).count("\n"), text)
    return CODE_SPAN.sub("code", text)


def links(path: Path, root: Path = REPO) -> list[Link]:
    text = without_code(path.read_text(encoding="utf-8"))
    name = path.relative_to(root)
    return [
        Link(path, f"{name}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1))
        for match in LINK.finditer(text)
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`([^`]*)`", r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, repeats numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken(link: Link) -> str | None:
    """Why `link` does not resolve, or None when it does (external links are not fetched)."""
    if re.match(r"[a-z][a-z0-9+.-]*:", link.target):
        return None
    path_part, _, anchor = link.target.partition("#")
    target = (link.source.parent / path_part).resolve() if path_part else link.source
    if not target.exists():
        return f"{link}: no such file {target}"
    if anchor:
        if target.suffix != ".md":
            return f"{link}: an anchor into {target.name}, which is not Markdown"
        if anchor not in anchors(target):
            return f"{link}: {target.name} has no heading with the anchor #{anchor}"
    return None


def problems(root: Path = REPO) -> list[str]:
    return [why for doc in documents(root) for link in links(doc, root) if (why := broken(link))]


def test_every_relative_link_and_anchor_in_the_readme_and_docs_resolves() -> None:
    assert problems() == []


def test_every_page_of_docs_is_linked_from_the_readme() -> None:
    readme = REPO / "README.md"
    linked = {
        (readme.parent / link.target.partition("#")[0]).resolve()
        for link in links(readme)
        if link.target.startswith("docs/")
    }
    assert set(documents()[1:]) - linked == set()


def test_the_readme_stays_a_five_minute_read() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 300, f"README.md has {lines} lines: move the detail into docs/"


def test_ci_runs_the_readme_s_test_command() -> None:
    """The README's Tests section and .ci/run run the suite the same way (workers, grouping)."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Tests\n", 1)[1]
    [documented] = re.findall(r"^python -m (pytest [^#\n]*?)\s*(?:#.*)?$", section, re.M)
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    [run] = re.findall(r"^python3 -m (pytest [^#\n]*?)\s*(?:#.*)?$", ci, re.M)
    assert run == documented
    assert "-n auto" in documented and "--dist loadgroup" in documented


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Run from cron / systemd", "run-from-cron--systemd"),
        ("JSON pages (PEP 691)", "json-pages-pep-691"),
        ("Latency: pages/s against `--workers`", "latency-pagess-against---workers"),
        ("After a lost or foreign state.json", "after-a-lost-or-foreign-statejson"),
    ],
)
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_named_with_its_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Two words\n")
    (tmp_path / "README.md").write_text(
        "# R\n\n[ok](docs/a.md#two-words) [self](#r) [web](https://example.org/x#y)\n"
        "`[in code](docs/nowhere.md)`\n\n```\n[in a block](docs/nowhere.md)\n```\n"
        "[gone](docs/b.md) [no anchor](docs/a.md#three)\n[bad self](#nope)\n"
    )
    assert problems(tmp_path) == [
        f"README.md:9: docs/b.md: no such file {tmp_path / 'docs' / 'b.md'}",
        "README.md:9: docs/a.md#three: a.md has no heading with the anchor #three",
        "README.md:10: #nope: README.md has no heading with the anchor #nope",
    ]
