"""Documents to sections: each section is text under one heading path."""

from __future__ import annotations

import re
from dataclasses import dataclass

import html2text
from markdown_it import MarkdownIt

from streamproc.errors import PermanentError

MARKDOWN_TYPES = {"text/markdown", "text/x-markdown"}
HTML_TYPES = {"text/html", "application/xhtml+xml"}
TEXT_TYPES = {"text/plain"}
SUPPORTED_TYPES = MARKDOWN_TYPES | HTML_TYPES | TEXT_TYPES

_BLANK_LINES = re.compile(r"\n\s*\n")
_FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.DOTALL)
_HEADING_ATTRS = re.compile(r"\s*\{#[^}]*\}\s*$")


@dataclass(frozen=True)
class Section:
    heading_path: tuple[str, ...]
    blocks: tuple[str, ...]  # paragraphs, list items, code blocks: never split across


def extract_sections(text: str, content_type: str) -> list[Section]:
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in HTML_TYPES:
        return _markdown_sections(html_to_markdown(text))
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
            title = _HEADING_ATTRS.sub("", tokens[i + 1].content).strip()
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


def _skip_block(tokens: list, i: int) -> int:  # type: ignore[type-arg]
    """Index after the top-level block that starts at `i` (its nested tokens included)."""
    depth = tokens[i].nesting
    i += 1
    while depth > 0 and i < len(tokens):
        depth += tokens[i].nesting
        i += 1
    return i
