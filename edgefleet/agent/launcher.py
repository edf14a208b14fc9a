"""``edgefleet-agent-launcher``: the tiny supervisor that runs the current agent version and
hands over to a new one, or goes back to the old one when the new one does not come up.

Why a launcher rather than the agent replacing itself: a running Python process cannot
safely swap the code it is running, and an agent that crashes on start can no longer
undo its own update. The launcher is the one piece that never changes with an agent
release; it stays small (standard library and ``edgefleet.fileio`` only, no MQTT, no
model runtime) so that there is little in it that can break.

The handover protocol, all files under ``<data_dir>/agent-versions/``::

    <version>/site/   the release's wheels, unpacked: put first on the child's sys.path
    current.json      which version runs (absent: the agent installed with the launcher)
    handover.json     the running agent asks for a handover (``HandoverRequest``)
    confirmed.json    the new agent came up, reconnected and reported (its version)
    outcome.json      the launcher went back to the old version, and why
    failed.json       bundle ids that failed a handover (the old agent refuses re-offers)

A handover: the running agent stages a release and writes ``handover.json``; the
launcher stops it (SIGTERM, then SIGKILL after ``stop_timeout_s``), starts the new
version with ``EDGEFLEET_AGENT_TRIAL`` naming it, and waits up to the request's
deadline for ``confirmed.json``. Confirmed: ``current.json`` names the new version.
Otherwise (the new agent exited, or the deadline passed) it stops the new one, writes
``outcome.json`` with the exit code and the last lines of its stderr, and starts the
old version again, which reports the failed update to the control plane.

An agent that exits on its own (not asked to) is restarted, after a back-off that grows
while it keeps failing. A handed-over version that exits ``CRASH_LOOP_EXITS`` times in a
row, each within ``QUICK_EXIT_S`` of its start, is given up: the version it replaced is
current again and reports why, as after a failed handover. SIGTERM or SIGINT stops the
agent and then the launcher.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

VERSIONS_DIR = "agent-versions"
TRIAL_ENV = "EDGEFLEET_AGENT_TRIAL"
"""Set for a new agent on trial: the version the launcher expects it to be."""
LAUNCHER_ENV = "EDGEFLEET_AGENT_LAUNCHER"
"""Set for every agent the launcher starts: an agent without it refuses agent releases,
since nothing would hand over to them."""
STDERR_TAIL_LINES = 20
QUICK_EXIT_S = 60.0
"""An agent that exits sooner than this after its start counts towards a crash loop."""
CRASH_LOOP_EXITS = 3
"""Quick exits in a row after which a handed-over version is given up for the previous."""
DEFAULT_DEADLINE_S = 120.0
POLL_S = 0.2


@dataclass(frozen=True)
class HandoverRequest:
    """What the running agent asks the launcher to start, and for which rollout."""

    version: str
    bundle_id: str
    release: int
    rollout_id: int | None = None


@dataclass(frozen=True)
class HandoverOutcome:
    """Why the launcher went back to the old version (written for the old agent to report)."""

    version: str
    bundle_id: str
    release: int
    rollout_id: int | None
    reason: str
    exit_code: int | None = None
    stderr_tail: tuple[str, ...] = ()


class VersionStore:
    """The files of the handover protocol under ``<data_dir>/agent-versions``."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / VERSIONS_DIR

    def site_dir(self, version: str) -> Path:
        return self.root / version / "site"

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.root / name).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            logger.error("unreadable launcher file name=%s reason=%s", name, e)
            return None
        return data if isinstance(data, dict) else None

    def _write(self, name: str, data: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write(self.root / name, json.dumps(data, sort_keys=True).encode() + b"\n")

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.root / name).unlink()

    def current(self) -> dict[str, Any]:
        """``current.json``: ``version`` (None: the installed agent), ``bundle_id``,
        ``release``, ``previous``."""
        return self._read("current.json") or {"version": None}

    def set_current(self, record: dict[str, Any]) -> None:
        self._write("current.json", record)

    def request(self) -> HandoverRequest | None:
        data = self._read("handover.json")
        if data is None:
            return None
        try:
            return HandoverRequest(**data)
        except TypeError as e:
            logger.error("handover request malformed, ignored reason=%s", e)
            self.remove("handover.json")
            return None

    def request_handover(self, request: HandoverRequest) -> None:
        self._write("handover.json", asdict(request))

    def confirmed(self) -> str | None:
        data = self._read("confirmed.json")
        return str(data.get("version")) if data else None

    def confirm(self, version: str) -> None:
        self._write("confirmed.json", {"version": version, "pid": os.getpid()})

    def outcome(self) -> HandoverOutcome | None:
        data = self._read("outcome.json")
        if data is None:
            return None
        try:
            return HandoverOutcome(**{**data, "stderr_tail": tuple(data.get("stderr_tail", ()))})
        except TypeError:
            return None

    def set_outcome(self, outcome: HandoverOutcome) -> None:
        self._write("outcome.json", asdict(outcome))

    def failed(self) -> dict[str, str]:
        """Bundle id -> why its handover failed."""
        data = self._read("failed.json") or {}
        return {str(k): str(v) for k, v in data.items()}

    def add_failed(self, bundle_id: str, reason: str) -> None:
        self._write("failed.json", {**self.failed(), bundle_id: reason})


class AgentProcess:
    """One agent child: its stderr is passed through and its last lines are kept."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self.process = subprocess.Popen(
            command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert self.process.stderr is not None
        self._reader = threading.Thread(
            target=self._pump, args=(self.process.stderr,), name="agent-stderr", daemon=True
        )
        self._reader.start()

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def poll(self) -> int | None:
        return self.process.poll()

    def stop(self, timeout: float) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("agent did not stop in time, killing pid=%d", self.process.pid)
                self.process.kill()
        code = self.process.wait()
        self._reader.join(5.0)
        return code

    def stderr_tail(self) -> tuple[str, ...]:
        self._reader.join(2.0)  # the lines written just before the exit
        return tuple(self.tail)


class Launcher:
    """Runs the current agent version; hands over on request; goes back on failure."""

    def __init__(
        self,
        config: Path,
        data_dir: Path,
        *,
        python: str = sys.executable,
        deadline_s: float = DEFAULT_DEADLINE_S,
        stop_timeout_s: float = 30.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self.config = Path(config).resolve()
        self.store = VersionStore(data_dir)
        self.python = python
        self.deadline_s = deadline_s
        self.stop_timeout_s = stop_timeout_s
        self.max_backoff_s = max_backoff_s
        self.stopping = threading.Event()

    def command(self) -> list[str]:
        # -P: the working directory must not shadow the version on PYTHONPATH.
        return [self.python, "-P", "-m", "edgefleet.agent", "run", "--config", str(self.config)]

    def spawn(self, version: str | None, *, trial: bool = False) -> AgentProcess:
        """Start ``version`` (None: the agent installed beside the launcher)."""
        env = {**os.environ, LAUNCHER_ENV: str(os.getpid())}
        env.pop(TRIAL_ENV, None)
        if version is not None:
            site = str(self.store.site_dir(version))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
        if trial and version is not None:
            env[TRIAL_ENV] = version
        logger.info("starting agent version=%s trial=%s", version or "installed", trial)
        self.store.root.mkdir(parents=True, exist_ok=True)
        return AgentProcess(self.command(), env, self.store.root.parent)

    def run(self) -> int:
        """Supervise until stopped; the exit code of the launcher."""
        backoff = 1.0
        quick_exits = 0
        child = self.spawn(self.store.current().get("version"))
        started = time.monotonic()
        while not self.stopping.wait(POLL_S):
            request = self.store.request()
            if request is not None:
                child = self.hand_over(child, request)
                started, quick_exits = time.monotonic(), 0
                continue
            code = child.poll()
            if code is None:
                if time.monotonic() - started > QUICK_EXIT_S:
                    backoff, quick_exits = 1.0, 0  # it ran a while: a crash starts anew
                continue
            quick_exits += 1
            if quick_exits >= CRASH_LOOP_EXITS and self.give_up_current(child, code, quick_exits):
                backoff, quick_exits = 1.0, 0
            else:
                logger.error("agent exited code=%d, restarting in %.0f s", code, backoff)
                if self.stopping.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff_s)
            child = self.spawn(self.store.current().get("version"))
            started = time.monotonic()
        child.stop(self.stop_timeout_s)
        logger.info("launcher stopped")
        return 0

    def give_up_current(self, child: AgentProcess, code: int, exits: int) -> bool:
        """A handed-over version that keeps exiting on start: make the version it replaced
        current again, and leave the reason for that one to report. False when there is
        nothing to go back to (the agent installed with the launcher)."""
        current = self.store.current()
        previous = current.get("previous_record")
        if current.get("version") is None or not isinstance(previous, dict):
            return False
        reason = (
            f"agent {current['version']} exited {exits} times within {QUICK_EXIT_S:.0f} s of "
            f"starting (last code {code}); went back to {previous.get('version') or 'installed'}"
        )
        self.store.set_outcome(
            HandoverOutcome(
                version=str(current["version"]),
                bundle_id=str(current.get("bundle_id")),
                release=int(current.get("release") or 0),
                rollout_id=current.get("rollout_id"),
                reason=reason,
                exit_code=code,
                stderr_tail=child.stderr_tail(),
            )
        )
        self.store.set_current(previous)
        logger.error("crash loop, going back reason=%s", reason)
        return True

    def hand_over(self, old: AgentProcess, request: HandoverRequest) -> AgentProcess:
        """Stop ``old``, try ``request.version``; the child that runs afterwards."""
        current = self.store.current()
        logger.info("handover version=%s from=%s", request.version, current.get("version"))
        old.stop(self.stop_timeout_s)
        self.store.remove("confirmed.json")
        new = self.spawn(request.version, trial=True)
        deadline = time.monotonic() + self.deadline_s
        reason: str | None = None
        while True:
            if self.store.confirmed() == request.version:
                break
            code = new.poll()
            if code is not None:
                reason = f"new agent {request.version} exited with code {code} before it reported"
                break
            if time.monotonic() >= deadline:
                reason = (
                    f"new agent {request.version} did not come up, reconnect and report "
                    f"within {self.deadline_s:.0f} s"
                )
                break
            if self.stopping.wait(POLL_S):
                reason = "launcher stopped during the handover"
                break
        if reason is None:
            self.store.set_current(
                {
                    "version": request.version,
                    "bundle_id": request.bundle_id,
                    "release": request.release,
                    "rollout_id": request.rollout_id,
                    "previous": current.get("version"),
                    # What a crash loop goes back to (one step: not its own previous).
                    "previous_record": {k: v for k, v in current.items() if k != "previous_record"},
                }
            )
            self.store.remove("handover.json")
            self.store.remove("confirmed.json")
            logger.info("handover confirmed version=%s", request.version)
            return new
        code = new.stop(self.stop_timeout_s)
        tail = new.stderr_tail()
        self.store.set_outcome(
            HandoverOutcome(
                version=request.version,
                bundle_id=request.bundle_id,
                release=request.release,
                rollout_id=request.rollout_id,
                reason=reason,
                exit_code=code,
                stderr_tail=tail,
            )
        )
        self.store.remove("handover.json")
        self.store.remove("confirmed.json")
        logger.error("handover failed, going back version=%s reason=%s",
                     current.get("version") or "installed", reason)  # fmt: skip
        return self.spawn(current.get("version"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgefleet-agent-launcher", description=__doc__)
    parser.add_argument("--config", type=Path, required=True, help="path to agent.toml")
    parser.add_argument("--handover-deadline", type=float, default=DEFAULT_DEADLINE_S,
                        help="seconds a new agent version has to come up, reconnect and "
                        "report before the launcher goes back to the old one")  # fmt: skip
    parser.add_argument("--stop-timeout", type=float, default=30.0,
                        help="seconds an agent has to stop before it is killed")  # fmt: skip
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Read the agent's data dir from its config, then supervise until a signal."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s launcher %(levelname)s %(message)s"
    )
    from edgefleet.agent.config import load_config
    from edgefleet.agent.errors import ConfigError

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"edgefleet-agent-launcher: {e}", file=sys.stderr)
        return 2
    launcher = Launcher(
        args.config,
        config.data_dir,
        deadline_s=args.handover_deadline,
        stop_timeout_s=args.stop_timeout,
    )
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        logger.info("stopping signal=%d", signum)
        launcher.stopping.set()
        if signals > 1:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return launcher.run()


if __name__ == "__main__":
    raise SystemExit(main())
