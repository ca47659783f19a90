"""HTML and Markdown extraction on real documentation pages: main content only, plain headings."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.chunking.extract import Section, extract_sections
from streamproc.settings import CORPUS

PAGES = Path(__file__).parents[1] / "data" / "html"


def _sections(name: str, *, main_content: bool = True) -> list[Section]:
    return extract_sections((PAGES / name).read_text(), "text/html", main_content=main_content)


def _text(sections: list[Section]) -> str:
    return "\n\n".join(b for s in sections for b in s.blocks)


def test_docbook_navigation_header_and_footer_are_dropped() -> None:
    whole = _sections("postgresql-15-sql-truncate.html", main_content=False)
    main = _sections("postgresql-15-sql-truncate.html")
    # The page really carries them: Prev / Up / Home / Next above and below the content.
    assert "Prev | Up" in _text(whole) and "START TRANSACTION | Home|  UNLISTEN" in _text(whole)
    assert "Prev" not in _text(main) and "Home" not in _text(main)
    assert [s.heading_path for s in main] == [
        ("TRUNCATE",),
        ("Synopsis",),
        ("Description",),
        ("Parameters",),
        ("Notes",),
        ("Examples",),
        ("Compatibility",),
        ("See Also",),
    ]
    assert "TRUNCATE [ TABLE ] [ ONLY ] name [ * ] [, ... ]" in _text(main)
    # Every block of the main content is kept, only the furniture goes.
    assert {b for s in main for b in s.blocks} < {b for s in whole for b in s.blocks}


def test_tutorial_page_keeps_its_text_code_and_footnote() -> None:
    main = _sections("postgresql-15-tutorial-join.html")
    assert [s.heading_path for s in main] == [("2.6. Joins Between Tables",)]
    text = _text(main)
    assert text.startswith("Thus far, our queries have only accessed one table at a time.")
    assert "SELECT * FROM weather JOIN cities ON city = name;" in text
    assert "This is only a conceptual model." in text  # the footnote is content
    assert "Prev" not in text and "2.7. Aggregate Functions" not in text


def test_sphinx_sidebar_related_bar_footer_and_permalinks_are_dropped() -> None:
    whole = _sections("python-3.11-toplevel-components.html", main_content=False)
    main = _sections("python-3.11-toplevel-components.html")
    assert ("Navigation",) in [s.heading_path for s in whole]
    assert "Copyright 2001-2026, Python Software Foundation" in _text(whole)
    assert [s.heading_path for s in main] == [
        ("9. Top-level components",),
        ("9. Top-level components", "9.1. Complete Python programs"),
        ("9. Top-level components", "9.2. File input"),
        ("9. Top-level components", "9.3. Interactive input"),
        ("9. Top-level components", "9.4. Expression input"),
    ]
    text = _text(main)
    assert text.startswith("The Python interpreter can get its input from a number of sources")
    assert "eval_input ::=  expression_list NEWLINE*" in text
    for furniture in ("Copyright", "Previous topic", "Report a Bug", "Show Source", "¶"):
        assert furniture not in text


def test_heading_paths_carry_no_markup() -> None:
    markdown = (
        "# 7\\. Simple statements¶\n\nIntro.\n\n"
        "## The `assert` *statement* ¶\n\nAsserts.\n\n"
        "## Using C#\n\nSharp.\n\n"
        "## Defaults {#default}\n\nValues.\n\n"
        "## Tom &amp; Jerry <span>x</span> #\n\nCats.\n"
    )
    assert [s.heading_path[-1] for s in extract_sections(markdown, "text/markdown")] == [
        "7. Simple statements",
        "The assert statement",
        "Using C#",
        "Defaults",
        "Tom & Jerry x",
    ]


def test_generic_page_keeps_the_article_and_its_own_header() -> None:
    html = """<html><body>
      <header><a href="/">Site</a><nav><a href="/a">A</a> <a href="/b">B</a></nav></header>
      <div class="breadcrumbs">Docs / Guide</div>
      <main><article>
        <header><h1>Key rotation</h1></header>
        <p>Keys rotate every 90 days.</p>
        <aside>Related posts</aside>
        <p><a rel="prev" href="/p">Older</a> <a rel="next" href="/n">Newer</a></p>
      </article></main>
      <div id="site-footer"><p>© 2026 Example Corp</p></div>
      <p>Copyright 2026 Example Corp. All rights reserved.</p>
    </body></html>"""
    sections = extract_sections(html, "text/html")
    assert [(s.heading_path, s.blocks) for s in sections] == [
        (("Key rotation",), ("Keys rotate every 90 days.",))
    ]


def test_copyright_prose_and_sections_stay() -> None:
    prose = "Copyright law " + "protects original works of authorship. " * 8
    html = (
        f"<html><body><h1>Licences</h1><p>{prose}</p><p>© 2026 Example</p>"
        "<div><h2>Copyright</h2><p>Ours.</p></div></body></html>"
    )
    sections = extract_sections(html, "text/html")
    assert [(s.heading_path, s.blocks) for s in sections] == [
        (("Licences",), (prose.strip(),)),
        (("Licences", "Copyright"), ("Ours.",)),
    ]


@pytest.mark.parametrize("name", ["go_mem.html", "asm.html"])
def test_pages_without_furniture_extract_as_before(name: str) -> None:
    """Keys and hashes of the chunks of pages with nothing to drop stay the same."""
    text = (CORPUS / name).read_text()
    assert extract_sections(text, "text/html") == extract_sections(
        text, "text/html", main_content=False
    )


def test_empty_or_comment_only_html_has_no_sections() -> None:
    assert extract_sections("  ", "text/html") == []
    assert extract_sections("<!-- nothing -->", "text/html") == []
