"""Every relative link in README.md and docs/*.md names a file or folder that exists (anchors are
not checked, only the files they are in), and every page of docs/ is reachable from the README."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(text: str) -> list[str]:
    """The targets of a page's inline markdown links and images, outside code."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)  # fenced code blocks
    text = re.sub(r"(`+)(?:(?!\1).)+\1", "", text, flags=re.S)  # inline code
    return LINK.findall(text)


def relative(target: str) -> bool:
    return not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) and not target.startswith("#")


def test_the_link_pattern_finds_links_and_skips_code():
    text = "[a](docs/x.md#part) ![b](img.png) `[c](not-a-link.md)` [d](https://example.org) [e](#here)\n" \
           "```\n[f](in-a-block.md)\n```\n"
    assert links(text) == ["docs/x.md#part", "img.png", "https://example.org", "#here"]
    assert [t for t in links(text) if relative(t)] == ["docs/x.md#part", "img.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    targets = [t for t in links(page.read_text(encoding="utf-8")) if relative(t)]
    missing = [t for t in targets if not (page.parent / t.split("#", 1)[0]).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = set(), [REPO / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen:
            continue
        seen.add(page)
        for target in links(page.read_text(encoding="utf-8")):
            path = (page.parent / target.split("#", 1)[0]).resolve()
            if relative(target) and path.suffix == ".md" and path.is_file():
                todo.append(path)
    unreachable = [p.name for p in PAGES if p.resolve() not in {s.resolve() for s in seen}]
    assert not unreachable, f"docs pages no link from the README leads to: {unreachable}"


def test_readme_stays_short_and_keeps_its_two_commands_first():
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 200, f"README.md has {len(readme)} lines; move detail into docs/"
    assert readme[2] == "```bash" and readme[3].startswith("# demo:") and readme[5] == "# tests:"
