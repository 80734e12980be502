"""Every relative link in README.md and docs/*.md names a file or folder that exists and, where it
names a heading of a markdown page (``page.md#heading``, ``#heading``), a heading that page has;
every page of docs/ is reachable from the README."""
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


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: the heading's text without markup, lower case,
    punctuation dropped, spaces as hyphens; a repeated one gets -1, -2, ..."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", text, flags=re.M):
        heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        name, n = slug, 0
        while name in found:
            n += 1
            name = f"{slug}-{n}"
        found.add(name)
    return found


def heading_found(page: Path, target: str) -> bool:
    """Whether ``target`` (``file#anchor`` relative to ``page``, or ``#anchor``) names a heading of a
    markdown page that exists; True for other targets (files that are not markdown, web addresses)."""
    if not relative(target) and not target.startswith("#"):
        return True
    file, anchor = target.split("#", 1)
    path = page.parent / file if file else page
    if path.suffix != ".md" or not path.is_file():
        return True  # a missing file is test_relative_links_resolve's to report
    return anchor in anchors(path.read_text(encoding="utf-8"))


def test_anchors_follow_githubs_rule(tmp_path):
    text = "# The model\n## Where `x` stands (2026-12-07)\n## The model\n```\n# not a heading\n```\n## [A link](a.md)'s part\n"
    assert anchors(text) == {"the-model", "where-x-stands-2026-12-07", "the-model-1", "a-links-part"}
    (tmp_path / "a.md").write_text(text)
    (tmp_path / "b.md").write_text("## Other page\n")
    page = tmp_path / "a.md"
    assert heading_found(page, "#the-model-1") and not heading_found(page, "#the-model-2")
    assert heading_found(page, "b.md#other-page") and not heading_found(page, "b.md#the-model")
    assert heading_found(page, "img.png#x") and heading_found(page, "https://example.org/#x")


def test_the_link_pattern_finds_links_and_skips_code():
    text = "[a](docs/x.md#part) ![b](img.png) `[c](not-a-link.md)` [d](https://example.org) [e](#here)\n" \
           "```\n[f](in-a-block.md)\n```\n"
    assert links(text) == ["docs/x.md#part", "img.png", "https://example.org", "#here"]
    assert [t for t in links(text) if relative(t)] == ["docs/x.md#part", "img.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page):
    found = links(page.read_text(encoding="utf-8"))
    missing = [t for t in found if relative(t) and not (page.parent / t.split("#", 1)[0]).exists()]
    assert not missing, f"{page.relative_to(REPO)} links to files that do not exist: {missing}"
    stale = [t for t in found if "#" in t and not heading_found(page, t)]
    assert not stale, f"{page.relative_to(REPO)} links to headings that do not exist: {stale}"


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
