"""Documents to sections: each section is text under one heading path.

HTML pages keep only their main content: navigation, sidebars, previous/next links, footers,
copyright lines and permalink marks are not the document. Generic article extractors were
measured on the documentation pages this is for (PostgreSQL's DocBook pages, Python's Sphinx
pages) and both lost content: trafilatura dropped every section title of the PostgreSQL pages
and readability-lxml kept only the largest block (`SELECT` lost its Synopsis, Description and
Compatibility). So the page's own structure decides: its `main` element (or `role="main"`, or
its only `article`) when it has one, minus the elements whose tag, ARIA role, class or id
name them as navigation or page furniture.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import html2text
import lxml.html
from lxml.etree import ParserError
from markdown_it import MarkdownIt
from markdown_it.token import Token

from streamproc.errors import PermanentError

MARKDOWN_TYPES = {"text/markdown", "text/x-markdown"}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"text/plain"}
SUPPORTED_TYPES = MARKDOWN_TYPES | HTML_TYPES | TEXT_TYPES

_BLANK_LINES = re.compile(r"\n\s*\n")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
_HEADING_ATTRS = re.compile(r"\s*\{#[^}]*\}\s*$")
# What documentation generators put after a heading as its link: Sphinx's ¶, § or #, and
# anchor-link icons. A `#` only counts apart from the title: "C#" keeps its own.
_PERMALINK_MARKS = "¶§#🔗⚓"
_TRAILING_PERMALINK = re.compile(r"(?:\s*[¶§🔗⚓]|\s+#)+$")
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")

# Page furniture by tag; `header` only when it holds no heading (a site banner, not the
# article's own title block).
_FURNITURE_TAGS = {"nav", "aside", "footer", "script", "style", "noscript", "template"}
_FURNITURE_ROLES = {
    "navigation",
    "banner",
    "contentinfo",
    "complementary",
    "search",
    "menu",
    "menubar",
}
# Words of a class or id (split at anything not a letter or digit) that name furniture:
# DocBook's navheader/navfooter, Sphinx's sphinxsidebar/related/footer, the usual site ones.
_FURNITURE_WORDS = {
    "nav",
    "navbar",
    "navheader",
    "navfooter",
    "navigation",
    "menu",
    "sidebar",
    "sphinxsidebar",
    "sidebarbutton",
    "breadcrumb",
    "breadcrumbs",
    "footer",
    "related",
    "pagination",
    "headerlink",
}
_WORD = re.compile(r"[a-z0-9]+")
_HEADING_TAGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_COPYRIGHT = re.compile(r"^\s*(?:©|\(c\)|copyright\b)", re.IGNORECASE)
# A copyright *line*: longer text that starts with the word is prose about copyright.
_COPYRIGHT_MAX_CHARS = 200
_LINE_TAGS = {"p", "div", "small", "span", "address", "li", "td"}


@dataclass(frozen=True)
class Section:
    heading_path: tuple[str, ...]
    blocks: tuple[str, ...]  # paragraphs, list items, code blocks: never split across


def extract_sections(text: str, content_type: str, *, main_content: bool = True) -> list[Section]:
    """`main_content=False` keeps whole HTML pages, furniture included (the extraction before
    boilerplate removal, kept to measure what the removal does)."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in HTML_TYPES:
        return _markdown_sections(html_to_markdown(main_html(text) if main_content else text))
    if media_type in MARKDOWN_TYPES:
        return _markdown_sections(text)
    if media_type in TEXT_TYPES:
        blocks = tuple(b.strip() for b in _BLANK_LINES.split(text) if b.strip())
        return [Section((), blocks)] if blocks else []
    raise PermanentError(
        f"content type {content_type!r} is not supported; use one of {sorted(SUPPORTED_TYPES)}",
        reason="unsupported_content_type",
    )


def html_to_markdown(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0  # no hard wrapping: blocks stay one paragraph each
    converter.ignore_images = True
    converter.ignore_links = True  # keep anchor text, drop URLs that only cost tokens
    converter.ignore_emphasis = True
    return converter.handle(html)


def main_html(html: str) -> str:
    """The page's main content as HTML, without its furniture and permalink marks."""
    try:
        # lxml refuses a str that declares its own encoding; the text is decoded already.
        page = lxml.html.document_fromstring(_XML_DECLARATION.sub("", html, count=1))
    except ParserError:  # nothing but whitespace or comments
        return ""
    root = _main_element(page)
    for element in list(root.iter()):
        if element is not root and _is_furniture(element):
            element.drop_tree()  # keeps the text that follows it
    return lxml.html.tostring(root, encoding="unicode")


def _main_element(page: lxml.html.HtmlElement) -> lxml.html.HtmlElement:
    for path in ("//main", "//*[@role='main']"):
        found = page.xpath(path)
        if found:
            return found[0]
    articles = page.xpath("//article")
    if len(articles) == 1:
        return articles[0]
    body = page.find("body")
    return body if body is not None else page


def _is_furniture(element: lxml.html.HtmlElement) -> bool:
    if not isinstance(element.tag, str):  # comments and processing instructions
        return True
    tag = element.tag.lower()
    if tag in _FURNITURE_TAGS:
        return True
    if tag == "header" and not _has_heading(element):
        return True
    if element.get("role", "").lower() in _FURNITURE_ROLES:
        return True
    if tag == "a" and (
        element.get("rel", "").lower() in {"prev", "next", "previous"}
        or (
            element.text_content().strip()
            and not element.text_content().strip(_PERMALINK_MARKS + " ")
        )
    ):
        return True
    words = set(_WORD.findall(f"{element.get('class', '')} {element.get('id', '')}".lower()))
    if words & _FURNITURE_WORDS:
        return True
    if tag in _LINE_TAGS and not _has_heading(element):
        text = element.text_content()
        return len(text.strip()) <= _COPYRIGHT_MAX_CHARS and bool(_COPYRIGHT.match(text))
    return False


def _has_heading(element: lxml.html.HtmlElement) -> bool:
    return any(e.tag in _HEADING_TAGS for e in element.iter())


def _markdown_sections(markdown: str) -> list[Section]:
    markdown = _FRONT_MATTER.sub("", markdown, count=1)
    lines = markdown.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    blocks: list[str] = []

    def flush() -> None:
        if blocks:
            sections.append(Section(tuple(title for _, title in path), tuple(blocks)))
            blocks.clear()

    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.type == "heading_open":
            flush()
            level = int(token.tag[1])
            title = heading_title(tokens[i + 1])
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, title))
            i += 3  # heading_open, inline, heading_close
            continue
        if token.type == "html_block" and token.content.lstrip().startswith("<!--"):
            i += 1
            continue
        if token.level == 0 and token.map is not None and token.type != "hr":
            start, end = token.map
            block = "\n".join(lines[start:end]).strip()
            if block:
                blocks.append(block)
            i = _skip_block(tokens, i)
            continue
        i += 1
    flush()
    return sections


def heading_title(inline: Token) -> str:
    """A heading's plain text: no Markdown escapes, code ticks, emphasis, inline HTML,
    `{#id}` attributes or trailing permalink marks."""
    parts = []
    for child in inline.children or ():
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif child.type == "image":
            parts.append("".join(c.content for c in child.children or ()))
    title = _HEADING_ATTRS.sub("", " ".join("".join(parts).split()))
    return _TRAILING_PERMALINK.sub("", title)


def _skip_block(tokens: list, i: int) -> int:  # type: ignore[type-arg]
    """Index after the top-level block that starts at `i` (its nested tokens included)."""
    depth = tokens[i].nesting
    i += 1
    while depth > 0 and i < len(tokens):
        depth += tokens[i].nesting
        i += 1
    return i
