"""The wheel, installed by the image's install script (scripts/image-install, what the
Dockerfile runs) into a fresh prefix outside the checkout, runs on its own: its schemas and
topology come from the package, it writes nowhere but where it is told, and a user other than
the installer can run it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from uv import find_uv_bin

from streamproc.settings import CHILD_SETTINGS_ENV, REPO_ROOT, Settings, child_env
from streamproc.topics import topic_name
from tests.pipeline_support import collect, event, produce_events

pytestmark = pytest.mark.integration

# What the process of the image may not inherit: anything pointing at the checkout or its venv.
NOT_INHERITED = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", CHILD_SETTINGS_ENV}


def _run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in NOT_INHERITED and not k.startswith("STREAMPROC_")
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prefix holding only the wheel, its dependencies and a baked model folder."""
    root = tmp_path_factory.mktemp("installed")
    assert not root.is_relative_to(REPO_ROOT)
    uv = find_uv_bin()
    # The sdist first, then the wheel from it, in uv's own temporary folder: this proves the
    # sdist carries the package data too and leaves no build/ in the checkout.
    _run([uv, "build", "-q", "--out-dir", str(root / "dist"), str(REPO_ROOT)], cwd=root)
    (wheel,) = (root / "dist").glob("streamproc-*.whl")
    # The versions this test environment runs, so uv installs from its cache (hard links):
    # seconds instead of a resolution and a download of torch.
    pins = root / "constraints.txt"
    pins.write_text(
        "".join(
            f"{d.metadata['Name']}=={d.version}\n"
            for d in metadata.distributions()
            if d.metadata["Name"] and d.metadata["Name"].lower() != "streamproc"
        )
    )
    models = root / "models"
    (models / "tiny").mkdir(parents=True)
    (models / "tiny" / "config.json").write_text("{}")
    _run(
        [str(REPO_ROOT / "scripts" / "image-install"), str(wheel), str(root / "opt")],
        cwd=root,
        env=_clean_env(
            UV=uv, UV_CONSTRAINT=str(pins), PYTHON=sys.executable, MODELS_DIR=str(models)
        ),
        timeout=900,
    )
    return root / "opt"


def _tree(prefix: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(prefix)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in prefix.rglob("*")
    }


def test_the_install_is_runnable_by_any_user_and_needs_no_bytecode_writes(prefix: Path) -> None:
    assert (prefix / "models" / "tiny" / "config.json").exists()
    for path in prefix.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        assert mode & stat.S_IROTH, f"{path} is not readable by other users"
        assert not mode & (stat.S_IWGRP | stat.S_IWOTH), f"{path} is writable by other users"
        if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
            assert mode & stat.S_IXOTH, f"{path} is not usable by other users"
    (package,) = prefix.glob("lib/python*/site-packages/streamproc")
    for module in package.rglob("*.py"):
        assert list((module.parent / "__pycache__").glob(f"{module.stem}.*.pyc")), module


def test_the_installed_wheel_applies_the_topology_and_runs_a_worker(
    prefix: Path, settings: Settings, tmp_path: Path
) -> None:
    bin_dir = prefix / "bin"
    inherited = json.loads(child_env(settings)[CHILD_SETTINGS_ENV])
    # The test services' settings, but the package's own schemas and topology.
    del inherited["schemas_dir"], inherited["topology_file"]
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = _clean_env(HOME=str(home), **{CHILD_SETTINGS_ENV: json.dumps(inherited)})
    before = _tree(prefix)

    assert "worker" in _run([str(bin_dir / "streamproc"), "--help"], cwd, env).stdout
    located = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "import streamproc.settings as s; t = s.Settings(); "
            "print(s.__file__, t.schemas_dir, t.topology_file, sep='\\n')",
        ],
        cwd,
        env,
    ).stdout.split()
    for path in map(Path, located):
        assert path.is_relative_to(prefix / "lib"), f"{path} is not inside the installed package"
        assert path.exists(), path

    applied = _run([str(bin_dir / "streamproc"), "topology", "apply"], cwd, env).stdout
    for topic in ("chunk-requested", "embed-requested", "alias-changes"):
        assert f"{topic_name(settings, topic)}: create" in applied, applied

    log = (tmp_path / "chunker.log").open("wb")
    worker = subprocess.Popen(
        [str(bin_dir / "streamproc"), "worker", "--role", "chunker"],
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        produce_events(settings, [event("wheel", "guide", "# Guide\n\nInstalled and running.")])
        requested = collect(settings, "embed-requested", lambda values: len(values) >= 1)
        assert requested[0][1]["chunk_key"] == "wheel/guide/p1/0"
    finally:
        worker.terminate()
        exit_code = worker.wait(timeout=90)
    assert exit_code == 0, (tmp_path / "chunker.log").read_text(errors="replace")[-3000:]
    # Read-only root filesystem friendly: the worker wrote only to its data_dir (settings).
    assert _tree(prefix) == before, "the installed tree changed while it ran"
    assert not list(home.iterdir()), f"wrote into HOME: {list(home.rglob('*'))[:10]}"
    assert not list(cwd.iterdir()), f"wrote into the working directory: {list(cwd.iterdir())}"
