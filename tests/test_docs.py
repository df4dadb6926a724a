"""The user documentation stays a README for users plus docs/ for the rest, and its links resolve."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_readme_stays_short():
    size = len((REPO / "README.md").read_bytes())
    assert size <= 9 * 1024, f"README.md is {size} bytes; move details into docs/<topic>.md and link them"


def test_every_relative_link_resolves():
    broken = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, "broken links: " + ", ".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    pages = {p.name: p.read_text(encoding="utf-8") for p in (REPO / "docs").glob("*.md")}
    linked, todo = set(), [(REPO / "README.md").read_text(encoding="utf-8")]
    while todo:  # follow links from the README through docs/
        for name in {Path(t).name for t in LINK.findall(todo.pop())} & set(pages) - linked:
            linked.add(name)
            todo.append(pages[name])
    missing = sorted(p.name for p in (REPO / "docs").glob("*.md") if p.name not in linked)
    assert not missing, f"docs pages no README link leads to: {missing}"
