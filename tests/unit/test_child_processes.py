"""A streamproc child ends with the process that launched it, even when that one is SIGKILLed:
an orphaned worker would keep its partitions (and an endpoint its port) from the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# A launcher that starts one child the way the demo and `worker --role all` do, prints the
# child's pid, and then waits to be killed.
LAUNCHER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from streamproc.worker.runner import child_process
    from streamproc.settings import Settings

    child = [sys.executable, "-c",
             "from streamproc.worker.runner import die_with_parent; die_with_parent(); "
             "import time; time.sleep(120)"]
    with child_process(child, Settings(), Path(sys.argv[1])) as proc:
        print(proc.pid, flush=True)
        time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by init) counts as gone.
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return status != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_child_ends_when_its_launcher_is_killed(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(tmp_path / "child.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    time.sleep(1.0)  # the child has set its death signal
    assert _alive(child)
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the child outlived its launcher"
