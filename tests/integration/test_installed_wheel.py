"""The wheel, installed into a fresh virtual environment outside the checkout, runs on its own:
its schemas and topology come from the package, not from a repository folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from uv import find_uv_bin

from streamproc.settings import CHILD_SETTINGS_ENV, REPO_ROOT, Settings, child_env
from tests.pipeline_support import collect, event, produce_events

pytestmark = pytest.mark.integration


def _run(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{argv} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh virtual environment holding only the wheel and its dependencies."""
    root = tmp_path_factory.mktemp("installed")
    assert not root.is_relative_to(REPO_ROOT)
    uv = find_uv_bin()
    # The sdist first, then the wheel from it, in uv's own temporary folder: this proves the
    # sdist carries the package data too and leaves no build/ in the checkout.
    _run([uv, "build", "-q", "--out-dir", str(root / "dist"), str(REPO_ROOT)], cwd=root)
    (wheel,) = (root / "dist").glob("streamproc-*.whl")
    venv = root / "venv"
    _run([uv, "venv", "-q", "--python", sys.executable, str(venv)], cwd=root)
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
    install = [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python")]
    _run(
        [*install, "--constraint", str(pins), str(wheel)],
        cwd=root,
        timeout=600,
    )
    return venv / "bin"


def _env(settings: Settings) -> dict[str, str]:
    """The test services' settings, without the checkout's schema and topology paths and
    without anything that would put the checkout on the import path."""
    inherited = json.loads(child_env(settings)[CHILD_SETTINGS_ENV])
    del inherited["schemas_dir"], inherited["topology_file"]
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    env[CHILD_SETTINGS_ENV] = json.dumps(inherited)
    return env


def test_the_installed_wheel_applies_the_topology_and_runs_a_worker(
    installed: Path, settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings)
    cwd = tmp_path  # outside the checkout: nothing can be found relative to it

    assert "worker" in _run([str(installed / "streamproc"), "--help"], cwd, env).stdout
    located = _run(
        [
            str(installed / "python"),
            "-c",
            "import streamproc.settings as s; t = s.Settings(); "
            "print(s.__file__, t.schemas_dir, t.topology_file, sep='\\n')",
        ],
        cwd,
        env,
    ).stdout.split()
    site = installed.parent / "lib"
    for path in map(Path, located):
        assert path.is_relative_to(site), f"{path} is not inside the installed package"
        assert path.exists(), path

    applied = _run([str(installed / "streamproc"), "topology", "apply"], cwd, env).stdout
    for topic in ("chunk-requested", "embed-requested", "alias-changes"):
        assert f"{settings.topic(topic)}: create" in applied, applied

    log = (tmp_path / "chunker.log").open("wb")
    worker = subprocess.Popen(
        [str(installed / "streamproc"), "worker", "--role", "chunker"],
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
