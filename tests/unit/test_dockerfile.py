"""The Dockerfile installs through scripts/image-install (tested outside Docker in
tests/integration/test_installed_wheel.py) and runs what the package and the manifests expect."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import yaml

from streamproc.settings import REPO_ROOT
from tests.deploy_support import cli_command, settings_from

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text()
# Instructions with their continuation lines joined.
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.lstrip().startswith("#")
]


def _last(keyword: str) -> str:
    return (
        [i for i in INSTRUCTIONS if i.startswith(f"{keyword} ")][-1].removeprefix(keyword).strip()
    )


def test_the_install_step_is_the_tested_script() -> None:
    runs = [i for i in INSTRUCTIONS if i.startswith("RUN ") and "image-install " in i]
    assert len(runs) == 1
    assert "COPY scripts/image-install /usr/local/bin/image-install" in INSTRUCTIONS
    assert "!scripts/image-install" in (REPO_ROOT / ".dockerignore").read_text().splitlines()


def test_it_runs_the_cli_as_the_non_root_user_the_manifests_expect() -> None:
    user = _last("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert json.loads(_last("ENTRYPOINT")) == ["streamproc"]
    cli_command(json.loads(_last("CMD")))
    for manifest in ("chunker.yaml", "embedder.yaml", "inference.yaml", "topology-job.yaml"):
        docs = yaml.safe_load_all((REPO_ROOT / "deploy/k8s/base" / manifest).read_text())
        pod = next(d for d in docs if d["kind"] in {"Deployment", "Job"})["spec"]["template"]
        assert pod["spec"]["securityContext"]["runAsUser"] == int(uid), manifest


def test_its_environment_names_real_settings_and_keeps_the_hub_off() -> None:
    env: dict[str, str] = {}
    for instruction in INSTRUCTIONS:
        if instruction.startswith("ENV "):
            env.update(part.split("=", 1) for part in shlex.split(instruction[4:]))
    settings = settings_from({k: v for k, v in env.items() if k.startswith("STREAMPROC_")})
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert str(settings.worker.data_dir) in _last("VOLUME")
    assert env["HOME"].startswith("/tmp")


def test_the_healthcheck_is_a_module_of_the_package() -> None:
    command = json.loads(_last("HEALTHCHECK").split("CMD", 1)[1])
    assert command[:2] == ["python", "-m"]
    assert importlib.util.find_spec(command[2]) is not None
