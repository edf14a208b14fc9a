"""The launcher's handover with stand-in agents: real child processes, no broker.

Each stand-in version is a directory whose ``edgefleet/agent/__main__.py`` shadows the
real agent on the child's ``sys.path`` (the launcher puts the version's ``site`` first),
so the launcher's own logic is exercised end to end: stop the old child, start the new
one, wait for its confirmation or its deadline, go back or commit.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.launcher import HandoverRequest, Launcher, VersionStore
from tests.support.polling import wait_until

pytestmark = pytest.mark.integration

STANDING = "import time\ntime.sleep(600)\n"
"""An agent that runs and never confirms."""
CONFIRMING = (
    "import json, os, pathlib, time\n"
    "root = pathlib.Path.cwd() / 'agent-versions'\n"
    "data = {'version': os.environ['EDGEFLEET_AGENT_TRIAL'], 'pid': os.getpid()}\n"
    "(root / 'confirmed.json').write_text(json.dumps(data))\n"
    "time.sleep(600)\n"
)


def make_version(store: VersionStore, version: str, main: str) -> None:
    """A stand-in agent ``version``: it writes a start marker, then runs ``main``."""
    agent = store.site_dir(version) / "edgefleet" / "agent"
    agent.mkdir(parents=True)
    (agent.parent / "__init__.py").write_text("")
    (agent / "__init__.py").write_text(f"__version__ = {version!r}\n")
    marker = f"open('started-{version}', 'a').write('x')\n"
    (agent / "__main__.py").write_text(marker + main)


def starts(store: VersionStore, version: str) -> int:
    path = store.root.parent / f"started-{version}"
    return len(path.read_text()) if path.exists() else 0


CRASHING = "raise SystemExit(4)\n"


@contextmanager
def running_launcher(tmp_path: Path, current: dict[str, Any]) -> Iterator[Launcher]:
    """A launcher over stand-in versions a, hangs, good and crashes, ``current`` first."""
    store = VersionStore(tmp_path)
    make_version(store, "a", STANDING)
    make_version(store, "hangs", STANDING)
    make_version(store, "good", CONFIRMING)
    make_version(store, "crashes", CRASHING)
    store.set_current(current)
    running = Launcher(tmp_path / "agent.toml", tmp_path, deadline_s=2.0, stop_timeout_s=5.0)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.stopping.set()
        thread.join(30)


@pytest.fixture
def launcher(tmp_path: Path) -> Iterator[Launcher]:
    with running_launcher(
        tmp_path, {"version": "a", "bundle_id": "agent-a-r1", "release": 1}
    ) as running:
        wait_until(lambda: starts(running.store, "a") == 1, "version a to start")
        yield running


def test_new_version_that_never_reports_is_undone_after_the_deadline(launcher: Launcher) -> None:
    store = launcher.store
    store.request_handover(HandoverRequest(version="hangs", bundle_id="agent-h-r2", release=2))

    outcome = wait_until(store.outcome, "the launcher to give up on the new version")

    assert "did not come up, reconnect and report within 2 s" in outcome.reason
    assert (outcome.bundle_id, outcome.release) == ("agent-h-r2", 2)
    assert starts(store, "hangs") == 1
    wait_until(lambda: starts(store, "a") == 2, "version a to run again")
    assert store.current()["version"] == "a"
    assert store.request() is None


def test_new_version_that_confirms_becomes_current(launcher: Launcher) -> None:
    store = launcher.store
    store.request_handover(HandoverRequest(version="good", bundle_id="agent-g-r3", release=3))

    # Committed: "good" is current, then the request is cleared (two steps, in that order).
    wait_until(
        lambda: store.current()["version"] == "good" and store.request() is None,
        "the handover to be committed",
    )

    current = store.current()
    assert (current["version"], current["bundle_id"], current["previous"]) == (
        "good", "agent-g-r3", "a"
    )  # fmt: skip
    assert current["previous_record"]["bundle_id"] == "agent-a-r1"
    assert store.outcome() is None
    assert starts(store, "a") == 1
    assert not (store.root / "handover.json").exists()
    assert json.loads((store.root / "current.json").read_text())["previous"] == "a"


def test_handed_over_version_in_a_crash_loop_gives_way_to_the_previous(tmp_path: Path) -> None:
    previous = {"version": "a", "bundle_id": "agent-a-r1", "release": 1}
    current = {"version": "crashes", "bundle_id": "agent-c-r4", "release": 4,
               "rollout_id": 9, "previous_record": previous}  # fmt: skip

    with running_launcher(tmp_path, current) as launcher:
        store = launcher.store
        outcome = wait_until(store.outcome, "the launcher to give up the crashing version")
        wait_until(lambda: starts(store, "a") == 1, "version a to run again")

    assert "exited 3 times" in outcome.reason and "went back to a" in outcome.reason
    assert (outcome.bundle_id, outcome.rollout_id, outcome.exit_code) == ("agent-c-r4", 9, 4)
    assert store.current() == previous
    assert starts(store, "crashes") == 3
