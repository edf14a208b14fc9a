"""The verify worker never outlives the agent that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.control_plane.trust.repository import SignedRepository
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

AGENT_STAND_IN = """
import sys, time
from pathlib import Path
from edgefleet.agent.verification.verifier import ProcessVerifier

class NeverAnswers:
    def stream(self, path, max_length):
        print("asked", path, flush=True)
        time.sleep(3600)
        yield b""

with ProcessVerifier(Path(sys.argv[1]), NeverAnswers()).open("bundle.tar"):
    pass
"""


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_verify_worker_exits_when_its_agent_is_killed_mid_verification(tmp_path: Path) -> None:
    repository = SignedRepository(tmp_path / "repository")
    repository.init_or_load()
    metadata = tmp_path / "device" / "tuf" / "metadata"
    metadata.mkdir(parents=True)
    (metadata / "root.json").write_bytes(repository.root_bytes())
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_STAND_IN, str(tmp_path / "device")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert agent.stdout is not None
        assert agent.stdout.readline().startswith("asked metadata/")  # the child is verifying
        (worker,) = children_of(agent.pid)
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()
        wait_until(lambda: not alive(worker), "the orphaned verify worker to exit", timeout=10)
    finally:
        if agent.poll() is None:
            agent.kill()
