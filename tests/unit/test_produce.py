"""Which files `streamproc produce` sends, under which doc ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamproc.errors import StreamprocError
from streamproc.produce import expand


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for page in ("index.html", "guide/index.html", "guide/setup/index.html", "api/index.html"):
        path = tmp_path / "docs" / page
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<h1>{page}</h1>")
    (tmp_path / "docs" / "guide" / "notes.md").write_text("# Notes")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _ids(patterns: list[str]) -> dict[str, str]:
    return {d.doc_id: d.path.as_posix() for d in expand(patterns)}


def test_glob_matches_get_ids_relative_to_the_globs_fixed_folder(site: Path) -> None:
    assert _ids(["docs/**/index.html"]) == {
        "index.html": "docs/index.html",
        "api/index.html": "docs/api/index.html",
        "guide/index.html": "docs/guide/index.html",
        "guide/setup/index.html": "docs/guide/setup/index.html",
    }


def test_ids_are_stable_however_the_fixed_folder_is_written(site: Path) -> None:
    relative = set(_ids(["docs/**/index.html"]))
    assert set(_ids([f"{site}/docs/**/index.html"])) == relative
    assert set(_ids(["./docs/**/*.html"])) == relative
    assert set(_ids(["docs/gu*/index.html"])) == {"guide/index.html"}


def test_folders_matched_by_a_glob_keep_their_place_under_the_fixed_folder(site: Path) -> None:
    assert set(_ids(["docs/g*"])) == {
        "guide/index.html",
        "guide/notes.md",
        "guide/setup/index.html",
    }


def test_folders_and_files_as_given(site: Path) -> None:
    assert set(_ids(["docs/guide"])) == {"index.html", "notes.md", "setup/index.html"}
    assert _ids(["docs/guide/notes.md"]) == {"notes.md": "docs/guide/notes.md"}


def test_two_inputs_with_one_doc_id_are_refused(site: Path) -> None:
    with pytest.raises(StreamprocError, match=r"index\.html.*docs/api/index\.html"):
        expand(["docs/index.html", "docs/api/index.html"])
    with pytest.raises(StreamprocError, match=r"index\.html"):
        expand(["docs/guide", "docs/api"])


def test_the_same_file_named_twice_is_sent_once(site: Path) -> None:
    docs = expand(["docs/guide/notes.md", "docs/**/*.md"])
    assert [d.path.as_posix() for d in docs] == ["docs/guide/notes.md"]
