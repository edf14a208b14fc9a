"""Chaos benchmark: is every answered inference counted exactly once, whatever breaks?

Everything is real: a private Mosquitto, the control plane as its own process, N
``edgefleet-agent`` processes (20 by default) each serving the digits model rolled out
to them, and a load driver that sends each agent a few inference requests a second and
keeps a ledger of the requests each agent answered. Then, in turn, one fault at a time,
each after a settle phase under load:

``broker-stop``        the broker SIGSTOPped for ``--stop-seconds``, then SIGCONT;
``broker-kill``        the broker SIGKILLed and started again after ``--broker-down``
                       seconds (same port, same configuration and data directory);
``cp-kill``            the control plane killed -9 and started again after ``--cp-down``;
``agent-kill-replay``  one agent cut off (TCP proxy) for ``--outage`` seconds with a slow
                       replay configured, then killed -9 while it replays its spool, and
                       restarted (with the default replay rate);
``spool-overflow``     one agent restarted with a ``--spool-cap-kib`` spool and cut off
                       for ``--long-outage`` seconds: its spool must drop, and report it;
``spool-corrupt``      one agent stopped, its spool file's header overwritten, started;
``partition``          some agents behind the proxy for ``--outage`` seconds, half of them
                       stalled (no bytes forwarded, sockets kept), half cut (closed);
``poison``             one device publishes a ~900 KB ``[[[[…`` payload and a small deeply
                       nested one on each of its up topics (status, report, fetch,
                       telemetry); the control plane is restarted after ``--poison-hold``
                       seconds, so a poison the broker redelivers is met again
                       ("converged" counts from that restart).

``replica-kill``       (``--replicas 2``) a rollout of a new bundle to every agent in
                       waves (1 device, 33 %, 66 %, 100 %; ``--soak`` seconds each, an
                       error-rate gate); when wave ``--kill-wave`` starts, the second
                       replica is killed -9 and stays down until the rollout has
                       completed and the ledger is checked.

``poison`` runs last by default: on a control plane that it stops storing telemetry
for good, every later scenario would only show that again.

``--replicas 2`` runs two ``edgefleet serve`` replicas in docs/replicas.md's layout
instead of one control plane on SQLite: a fresh PostgreSQL database (created on the
server ``--postgres`` names, dropped afterwards), one shared directory, one shared
subscription group, a client id and data directory each, the product's default MQTT
session expiry. Every scenario then runs against them (``cp-kill`` and ``poison``
restart the first replica), and ``replica-kill`` is added to the default scenarios.
Choosing ``replica-kill`` implies ``--replicas 2``. What it measures, from the rollout
as the surviving replica's API shows it (polled every 0.1 s; offer and progress times
are the database's): per device, the install time from its offer to the control plane
seeing it active, for the installs finished before the kill (the baseline); and the
install stall of those finished after it: from the later of the device's offer and its
last progress before the kill, to the control plane seeing it active (goal: under
5 s); the time from the kill to the rollout's completion; that each wave started once;
and how many of the survivor's API answers failed.

After each fault the load keeps running until every device's stored inference count has
caught up with its ledger (less the window still open on the device), within
``--converge-timeout``; that time, counted from the moment the fault was healed, is
"converged". Then the load pauses, the agents close their windows, and the stored counts
(the sum of ``data.count`` over stored ``inference`` events, read through the control
plane's ``GET /api/v1/events/summary``) are compared with the frozen ledger: lost,
duplicated, and what the agents reported dropped from their spools (``spool`` events).
Where a spool cap forced drops, the reported loss should equal the ledger's difference
exactly.

An agent's open telemetry window lives only in its memory, and a stop or a kill -9 loses
it: before the benchmark stops or kills an agent it pauses that agent's load for one
window, so what is measured is the spool and the pipeline, not that known gap.

    .venv/bin/python bench/chaos.py                      # 20 agents, full durations
    .venv/bin/python bench/chaos.py --agents 4 --short   # a few minutes
    .venv/bin/python bench/chaos.py --scenarios broker-kill,poison --json out.json
    .venv/bin/python bench/chaos.py --agents 6 --short --scenarios replica-kill

Exit status 0 when every scenario kept its ledger, 1 when one did not, 2 when the run
could not be set up or was cut short.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from chaos_faults import FaultProxy
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

from edgefleet import topics
from edgefleet.agent.config import TelemetryConfig
from edgefleet.agent.telemetry.counters import INFERENCE_PRIORITY
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker, let_broker_enter
from edgefleet.control_plane.client import ApiClient, ApiError
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.errors import TransportError
from edgefleet.mqtt import MqttLink
from edgefleet.tensors import encode_tensor
from edgefleet_demo.digits import train_digits_model
from edgefleet_demo.spine import agent_config, write_agent_config

PROFILE = "x86-64-gateway-onnx"
MODEL = "digits"
REQUEST_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.25
CLOSE_MARGIN_S = 1.0  # after a window closes: fold, spool flush, forwarder tick, ingest
RESEND_S = TelemetryConfig().receipt_timeout_s  # the agents' default wait for a receipt
SPOOL_FILE = "spool.sqlite"
POISON_BIG = b"[" * 900_000
POISON_NESTED = b"[" * 20_000 + b"]" * 20_000
# Keys under which a drop summary may say how many inferences the dropped events carried.
# Today's summary counts events per priority only.
INFERENCE_KEYS = frozenset(
    {"inferences", "inference_count", "inferences_lost", "lost_inferences", "dropped_inferences"}
)
SCENARIO_ORDER = [
    "broker-stop",
    "broker-kill",
    "cp-kill",
    "agent-kill-replay",
    "spool-overflow",
    "spool-corrupt",
    "partition",
    "replica-kill",
    "poison",
]
NEEDS_REPLICAS = frozenset({"replica-kill"})
ADMIN_DSN = os.environ.get("EDGEFLEET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SHARED_GROUP = "cp-chaos-replicas"
WATCH_POLL_S = 0.1
NOT_PROGRESS = frozenset({"pending", "superseded", "cancelled"})  # rollout rows, not installs
STALL_GOAL_S = 5.0


def log(console: Console, text: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}")


def wait_until(predicate: Callable[[], Any], timeout: float, poll: float = POLL_S) -> Any:
    """Poll ``predicate`` until truthy (returned) or ``timeout`` seconds (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(poll)


def require(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    value = wait_until(predicate, timeout)
    if not value:
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
    return value


def pid_running_with(argument: str) -> int | None:
    """The pid of a process with ``argument`` on its command line (Linux ``/proc``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argument.encode() in cmdline:
            return int(entry.name)
    return None


# -- the ledger and the load -------------------------------------------------------------


class Ledger:
    """When each device answered each request (monotonic seconds), and what failed."""

    def __init__(self, devices: list[str]) -> None:
        self._lock = threading.Lock()
        self._answered: dict[str, list[float]] = {d: [] for d in devices}
        self.refused = dict.fromkeys(devices, 0)  # no connection: the agent is down
        self.unanswered = dict.fromkeys(devices, 0)  # timed out: maybe served, maybe not
        self.failed = dict.fromkeys(devices, 0)  # answered, but not 200

    def answer(self, device: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._answered[device].append(now)

    def count(self, device: str, before: float | None = None) -> int:
        with self._lock:
            times = self._answered[device]
            return len(times) if before is None else bisect_right(times, before)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {d: len(t) for d, t in self._answered.items()}

    def errors(self) -> dict[str, tuple[int, int, int]]:
        with self._lock:
            return {d: (self.refused[d], self.unanswered[d], self.failed[d]) for d in self.refused}


class LoadDriver:
    """One thread per device posting one digit at ``rate`` requests/s to its endpoint."""

    def __init__(self, ports: dict[str, int], rate: float, body: bytes, ledger: Ledger) -> None:
        self.ports = ports
        self.rate = rate
        self.body = body
        self.ledger = ledger
        self._stop = threading.Event()
        self._paused = dict.fromkeys(ports, True)
        self._idle = {d: threading.Event() for d in ports}
        self._threads = [
            threading.Thread(target=self._drive, args=(d,), name=f"load-{d}", daemon=True)
            for d in ports
        ]
        for thread in self._threads:
            thread.start()

    def resume(self, devices: list[str] | None = None) -> None:
        for d in devices or list(self.ports):
            self._idle[d].clear()
            self._paused[d] = False

    def pause(self, devices: list[str] | None = None) -> None:
        """Pause, and return once no request to ``devices`` is in flight."""
        chosen = devices or list(self.ports)
        for d in chosen:
            self._paused[d] = True
        for d in chosen:
            if not self._idle[d].wait(REQUEST_TIMEOUT_S + 5):
                raise RuntimeError(f"load for {d} did not pause")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_TIMEOUT_S + 5)

    def _drive(self, device: str) -> None:
        interval = 1.0 / self.rate
        headers = {"content-type": "application/json"}
        with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                if self._paused[device]:
                    self._idle[device].set()
                    time.sleep(0.02)
                    next_at = time.monotonic()
                    continue
                now = time.monotonic()
                if now < next_at:
                    time.sleep(min(next_at - now, 0.1))
                    continue
                next_at = max(next_at + interval, now - interval)  # no catch-up bursts
                url = f"http://127.0.0.1:{self.ports[device]}/v2/models/{MODEL}/infer"
                try:
                    response = client.post(url, content=self.body, headers=headers)
                except httpx.TimeoutException:
                    self.ledger.unanswered[device] += 1
                    continue
                except httpx.TransportError:
                    self.ledger.refused[device] += 1
                    time.sleep(0.2)
                    continue
                if response.status_code == 200:
                    self.ledger.answer(device)
                else:
                    self.ledger.failed[device] += 1


# -- what the control plane stored ------------------------------------------------------


@dataclass
class Reported:
    """What a device's spool drop summaries said it lost."""

    events: int = 0
    inference_events: int = 0
    inferences: int | None = None  # None: no summary said how many inferences


@dataclass
class Stored:
    inferences: dict[str, int]
    windows: dict[str, int]
    reported: dict[str, Reported]


def drop_figures(data: Any) -> Reported:
    """What one ``spool`` event's ``data`` reports dropped.

    Events: the numbers under ``dropped`` (``{priority or kind: n}``, or
    ``{kind: {"events": n, ...}}``); inference events: those under ``inference`` or
    the inference priority. Inferences: any number under one of ``INFERENCE_KEYS``
    anywhere in ``data``; None when there is none.
    """
    events = inference_events = 0
    dropped = data.get("dropped") if isinstance(data, dict) else None
    if isinstance(dropped, dict):
        for key, value in dropped.items():
            n = 0
            if isinstance(value, int | float):
                n = int(value)
            elif isinstance(value, dict) and isinstance(value.get("events"), int | float):
                n = int(value["events"])
            events += n
            if key in ("inference", str(INFERENCE_PRIORITY)):
                inference_events += n
    found: list[int] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in INFERENCE_KEYS and isinstance(v, int | float):
                    found.append(int(v))
                else:
                    walk(v)

    walk(data)
    return Reported(events, inference_events, sum(found) if found else None)


class Store:
    """Reads what the control plane stored through its API: ``/events/summary`` for the
    inference windows and their counts, ``/events?kind=spool`` for drop summaries. Asks
    each live replica in turn, and retries for a while (a restarted one may still be
    coming up)."""

    def __init__(self, apis: Callable[[], list[ApiClient]]) -> None:
        self.apis = apis

    def read(self) -> Stored:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            failure: ApiError | None = None
            for api in self.apis():
                try:
                    return self._read(api)
                except ApiError as e:
                    failure = e
            if time.monotonic() > deadline:
                raise failure or RuntimeError("no live control plane to read from")
            time.sleep(POLL_S)

    @staticmethod
    def _read(api: ApiClient) -> Stored:
        summary = api.event_summary(kind="inference")
        spools = api.list_events(kind="spool", limit=10_000)
        reported: dict[str, Reported] = {}
        for event in spools:
            one = drop_figures(event.get("data") or {})
            r = reported.setdefault(event["device_id"], Reported())
            r.events += one.events
            r.inference_events += one.inference_events
            if one.inferences is not None:
                r.inferences = (r.inferences or 0) + one.inferences
        return Stored(
            inferences={row["device_id"]: int(row["count_total"]) for row in summary},
            windows={row["device_id"]: int(row["events"]) for row in summary},
            reported=reported,
        )


class Database:
    """A fresh PostgreSQL database for the replicas, dropped when the run ends."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"edgefleet_chaos_{uuid.uuid4().hex[:12]}"
        self.created = False

    @property
    def url(self) -> str:
        base = self.admin_dsn.rsplit("/", 1)[0]
        return f"{base.replace('postgresql://', 'postgresql+psycopg://', 1)}/{self.name}"

    def _execute(self, statement: str) -> None:
        import psycopg  # only the replica runs need it

        try:
            with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=5) as admin:
                admin.execute(statement)
        except psycopg.Error as e:
            raise RuntimeError(f"PostgreSQL at {self.admin_dsn}: {e}") from e

    def create(self) -> str:
        self._execute(f'CREATE DATABASE "{self.name}"')
        self.created = True
        return self.url

    def drop(self) -> None:
        if self.created:
            self._execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self.created = False


# -- processes --------------------------------------------------------------------------


class ControlPlane:
    """``python -m edgefleet.control_plane serve`` on a fixed port and data directory, restartable.

    With ``shared`` (docs/replicas.md's shared settings: database, shared directory,
    broker, group) it is one replica: its own client id ``cp-<name>`` and data directory.
    """

    def __init__(
        self,
        root: Path,
        broker_url: str,
        *,
        name: str = "control-plane",
        shared: dict[str, str] | None = None,
        token: str | None = None,
    ) -> None:
        self.name = name
        self.data_dir = root / name
        self.log = root / f"{name}.log"
        self.port = free_port()
        self.broker_url = broker_url
        self.shared = shared
        self.token = token  # None: the admin token this one wrote on a fresh database
        self.process: subprocess.Popen[bytes] | None = None
        self.api: ApiClient | None = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        command = [
            sys.executable, "-m", "edgefleet.control_plane", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--log-level", "info",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.shared is None:
            command += ["--broker", self.broker_url, "--data-dir", str(self.data_dir)]
        else:
            env |= self.shared | {
                "EDGEFLEET_CLIENT_ID": f"cp-{self.name}",
                "EDGEFLEET_DATA_DIR": str(self.data_dir),
            }
        with self.log.open("ab") as out:
            out.write(f"==== chaos: start {self.starts}\n".encode())
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        probe = ApiClient(self.base_url, token="none")
        try:
            require(lambda: self._healthy(probe), READY_TIMEOUT_S, f"the {self.name} API")
        finally:
            probe.close()
        if self.api is None:
            token_file = self.data_dir / "admin.token"
            if self.token is None and token_file.exists():
                self.token = token_file.read_text().strip()
            self.api = ApiClient(self.base_url, token=self.token, timeout=120)

    def _healthy(self, probe: ApiClient) -> bool:
        if not self.alive():
            tail = self.log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"{self.name} exited:\n" + "\n".join(tail))
        try:
            return probe.health().get("status") == "ok"
        except (ApiError, httpx.HTTPError):
            return False

    def health(self) -> str:
        if self.api is None:
            return "unknown"
        try:
            return str(self.api.health().get("status"))
        except (ApiError, httpx.HTTPError) as e:
            return f"unreachable ({type(e).__name__})"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.alive():
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.alive():
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def close(self) -> None:
        self.stop()
        if self.api is not None:
            self.api.close()


@dataclass
class Agent:
    """One ``edgefleet-agent run`` process with its own data directory and endpoint."""

    device_id: str
    root: Path
    broker_url: str  # the broker, or this agent's route through the fault proxy
    trust_root: Path
    telemetry: dict[str, float]
    link: dict[str, float] = field(default_factory=dict)
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "agent.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "agent.log"

    def configure(self, telemetry: dict[str, float] | None = None) -> None:
        """Write ``agent.toml``: the run's telemetry settings, overridden by ``telemetry``."""
        merged = {**self.telemetry, **(telemetry or {})}
        extra = "\n[telemetry]\n" + "".join(f"{k} = {v}\n" for k, v in merged.items())
        if self.link:
            extra += "\n[link]\n" + "".join(f"{k} = {v}\n" for k, v in self.link.items())
        extra += "\n[probation]\nseconds = 1\n"
        if not self.port:  # first time: the endpoint gets a free port, kept from then on
            self.root.mkdir(parents=True, exist_ok=True)
            self.port = write_agent_config(
                self.config_path,
                device_id=self.device_id,
                profile=PROFILE,
                broker=self.broker_url,
                data_dir=self.data_dir,
                trust_root=self.trust_root,
                extra=extra,
            )
            return
        text = agent_config(
            device_id=self.device_id,
            profile=PROFILE,
            broker=self.broker_url,
            data_dir=self.data_dir,
            trust_root=self.trust_root,
            port=self.port,
        )
        self.config_path.write_text(text + extra)

    def start(self) -> None:
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"==== chaos: start {self.starts}\n".encode())
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.agent", "run", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def ready(self, probe: str = "ready") -> bool:
        """The endpoint answers ``/v2/health/<probe>`` (``ready``: a model is loaded)."""
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/v2/health/{probe}", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, probe: str = "ready") -> bool:
        wait_until(lambda: self.ready(probe) or not self.alive(), timeout)
        return self.alive() and self.ready(probe)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self) -> None:
        if self.process is not None and self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.alive():
            self.process.kill()
            self.process.wait()

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.data_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def journal_state(self) -> str | None:
        try:
            journal = self.data_dir / "models" / MODEL / "journal.json"
            state = json.loads(journal.read_text()).get("state")
        except (OSError, ValueError):
            return None
        return str(state) if state else None

    def offers_received(self, bundle_id: str) -> int:
        """How many offers of ``bundle_id`` this agent logged receiving."""
        needle = f"offer received bundle_id={bundle_id} "
        return sum(needle in line for line in self.log.read_text(errors="replace").splitlines())

    def last_log_line(self) -> str:
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line]
        return lines[-1][-200:] if lines else ""


# -- results -----------------------------------------------------------------------------


@dataclass
class DeviceOutcome:
    device_id: str
    expected: int
    stored: int
    lost: int
    duplicated: int
    reported_events: int
    reported_inference_events: int
    reported_inferences: int | None
    refused: int
    unanswered: int
    failed: int


@dataclass
class InstallTiming:
    """One device's install in the replica-kill rollout, in seconds from the kill
    (negative: before it), as the database recorded them."""

    device_id: str
    wave: int
    offered: float | None
    last_progress_before_kill: float | None  # None: offered after the kill
    active: float | None  # None: never seen active
    seconds: float | None  # install time (before the kill) or stall (after it)
    after_kill: bool


@dataclass
class RolloutFigures:
    """What the replica-kill rollout did around the kill."""

    bundle_id: str
    rollout_id: int
    waves: list[int]  # cumulative sizes
    soak_s: float
    killed: str
    kill_wave: int
    state: str
    complete_after_kill_s: float | None
    baseline_installs: int
    baseline_p50_s: float | None
    baseline_max_s: float | None
    stalled_installs: int
    stall_p50_s: float | None
    stall_max_s: float | None
    stall_goal_s: float
    waves_started: list[int]
    offers: dict[str, int]  # per device, offers of the bundle its agent logged receiving
    api_polls: int
    api_failures: int
    installs: list[InstallTiming] = field(default_factory=list)


@dataclass
class ScenarioResult:
    name: str
    title: str
    devices: int
    expected: int
    stored: int
    lost: int
    duplicated: int
    reported_events: int
    reported_inference_events: int
    reported_inferences: int | None
    refused: int
    unanswered: int
    converged_s: float | None
    converge_timeout_s: float
    exact: bool  # stored (+ reported, where a cap forced drops) == ledger for every device
    ok: bool
    capped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    per_device: list[DeviceOutcome] = field(default_factory=list)
    rollout: RolloutFigures | None = None


@dataclass
class Fault:
    """What a scenario did: when it healed, which devices had a spool cap, notes, and
    what to undo once the outcome is measured."""

    healed_at: float
    capped: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    undo: Callable[[], None] | None = None
    failed: bool = False  # the system did not come back on its own
    rollout: RolloutFigures | None = None


@dataclass
class Options:
    agents: int = 20
    rate: float = 5.0
    window: float = 1.0
    stop_seconds: float = 60.0
    broker_down: float = 30.0
    cp_down: float = 5.0
    outage: float = 30.0
    long_outage: float = 120.0
    poison_hold: float = 10.0
    spool_cap_kib: float = 32.0
    settle: float = 10.0
    converge_timeout: float = 180.0
    reconnect_max: float | None = None
    receipt_timeout: float = RESEND_S  # the agents' wait for a receipt before they resend
    replicas: int = 1
    postgres: str = ADMIN_DSN
    soak: float = 2.0  # per wave of the replica-kill rollout
    kill_wave: int = 3
    scenarios: list[str] = field(
        default_factory=lambda: [s for s in SCENARIO_ORDER if s not in NEEDS_REPLICAS]
    )


# -- a rollout, watched ----------------------------------------------------------------


def epoch(stamp: str | None) -> float | None:
    """An API timestamp as epoch seconds (naive ones are UTC, as the API writes them)."""
    if not stamp:
        return None
    moment = datetime.fromisoformat(stamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class RolloutWatch:
    """Polls one rollout through one control plane's API every ``WATCH_POLL_S`` and keeps,
    per device, its offer time and every (state, time) the database recorded, plus how
    many polls failed. The times are the database's, so polling only decides which
    intermediate states are seen, not when they happened."""

    def __init__(self, api: ApiClient, rollout_id: int) -> None:
        self.api = api
        self.rollout_id = rollout_id
        self.latest: dict[str, Any] = {}
        self.offered: dict[str, float] = {}
        self.steps: dict[str, dict[str, float]] = {}  # device -> state -> first time seen
        self.waves: dict[str, int] = {}
        self.polls = 0
        self.failures = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="rollout-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(WATCH_POLL_S)

    def poll(self) -> None:
        try:
            rollout = self.api.get_rollout(self.rollout_id)
        except ApiError:
            with self._lock:
                self.polls += 1
                self.failures += 1
            return
        with self._lock:
            self.polls += 1
            self.latest = rollout
            for row in rollout.get("devices", []):
                device = row["device_id"]
                self.waves[device] = int(row["wave"])
                offered = epoch(row.get("offered_at"))
                if offered is not None:
                    self.offered[device] = offered
                updated = epoch(row.get("updated_at"))
                if updated is not None and row["state"] not in NOT_PROGRESS:
                    self.steps.setdefault(device, {}).setdefault(row["state"], updated)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.latest)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.poll()  # the final state, whatever the timing of the last loop

    def timings(self, killed_at: float) -> list[InstallTiming]:
        """Per device: install time (finished before the kill) or stall (after it)."""
        rows = []
        with self._lock:
            for device, wave in sorted(self.waves.items()):
                offered = self.offered.get(device)
                steps = self.steps.get(device, {})
                active = steps.get("active")
                before = [
                    t
                    for t in [offered, *steps.values()]
                    if t is not None and offered is not None and offered <= t <= killed_at
                ]
                after_kill = active is None or active > killed_at
                # After the kill: from its offer, or from its last progress before the kill.
                start = max(before) if after_kill and before else offered
                seconds = None if active is None or start is None else active - start
                rows.append(
                    InstallTiming(
                        device_id=device,
                        wave=wave,
                        offered=None if offered is None else offered - killed_at,
                        last_progress_before_kill=(max(before) - killed_at) if before else None,
                        active=None if active is None else active - killed_at,
                        seconds=seconds,
                        after_kill=after_kill,
                    )
                )
        return rows


def p50_max(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.median(values), max(values)) if values else (None, None)


def seconds_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


# -- the run -------------------------------------------------------------------------------


class Chaos:
    """The system under test, the load on it, and the faults."""

    def __init__(self, root: Path, options: Options, console: Console) -> None:
        self.root = root
        self.o = options
        self.console = console
        self.broker = MosquittoBroker(root / "broker")
        self.proxy: FaultProxy | None = None
        self.cp: ControlPlane | None = None  # the one control plane, or the first replica
        self.replicas: list[ControlPlane] = []  # every control-plane process, self.cp first
        self.database: Database | None = None
        self.next_bundle: str | None = None  # what replica-kill rolls out
        self.agents: dict[str, Agent] = {}
        self.ledger: Ledger | None = None
        self.load: LoadDriver | None = None
        self.store: Store | None = None
        self.results: list[ScenarioResult] = []
        ids = [f"dev-chaos{i:04d}" for i in range(1, options.agents + 1)]
        n = len(ids)
        # Roles. The capped, replaying and partitioned agents reach the broker through
        # the fault proxy (a route each) when their scenario runs; the others, and
        # every agent in a run without those scenarios, connect to it directly.
        self.capped = ids[0]
        self.replayer = ids[1]
        self.partitioned = ids[2 : 2 + max(1, n // 5)]
        self.corrupted = ids[-1]
        self.poisoner = ids[-2] if n > 3 else ids[-1]
        wanted = set(options.scenarios)
        self.proxied = {
            *([self.capped] if "spool-overflow" in wanted else []),
            *([self.replayer] if "agent-kill-replay" in wanted else []),
            *(self.partitioned if "partition" in wanted else []),
        }
        self.ids = ids

    # -- set-up ---------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        self.broker.start()
        self.proxy = FaultProxy("127.0.0.1", self.broker.port)
        self.start_control_planes()
        assert self.cp is not None and self.cp.api is not None
        api = self.cp.api
        log(
            self.console,
            f"mosquitto {self.broker.url}, control plane "
            + ", ".join(f"{cp.name} {cp.base_url}" for cp in self.replicas)
            + f", data in {self.root}",
        )
        with threadpool_limits(1):
            model = train_digits_model()
        api.register_model(
            name=MODEL,
            version="1",
            model=model.onnx_bytes,
            samples=model.samples,
            holdout_x=model.holdout_x,
            holdout_y=model.holdout_y,
        )
        bundle = api.build_bundle(model=MODEL, version="1", profile=PROFILE)
        trust_root = self.root / "root.json"
        trust_root.write_bytes(api.trust_root())
        log(self.console, f"bundle {bundle['id']} built and signed")
        if "replica-kill" in self.o.scenarios:  # built through the other replica
            other = self.replicas[-1].api
            assert other is not None
            other.register_model(
                name=MODEL,
                version="2",
                model=model.onnx_bytes,
                samples=model.samples,
                holdout_x=model.holdout_x,
                holdout_y=model.holdout_y,
            )
            self.next_bundle = other.build_bundle(model=MODEL, version="2", profile=PROFILE)["id"]
            log(self.console, f"bundle {self.next_bundle} built and signed for replica-kill")

        telemetry: dict[str, float] = {
            "window_s": self.o.window,
            "receipt_timeout_s": self.o.receipt_timeout,
        }
        link = {} if self.o.reconnect_max is None else {"reconnect_max_s": self.o.reconnect_max}
        for device in self.ids:
            url = self.broker.url
            if device in self.proxied:
                url = f"mqtt://127.0.0.1:{self.proxy.add_route(device)}"
            agent = Agent(device, self.root / "agents" / device, url, trust_root, telemetry, link)
            agent.configure()
            agent.start()
            self.agents[device] = agent
        for agent in self.agents.values():
            if not agent.wait_ready(probe="live"):  # no model yet
                raise RuntimeError(f"{agent.device_id} did not start: {agent.last_log_line()}")
        wanted = set(self.ids)
        require(
            lambda: wanted <= {d["id"] for d in api.list_devices() if d.get("online")},
            120,
            f"{len(wanted)} agents online",
        )
        rollout = api.create_rollout(bundle_id=bundle["id"], device_ids=self.ids)
        require(
            lambda: api.get_rollout(rollout["id"])["state"] not in ("draft", "in_progress"),
            300,
            "the rollout to finish",
        )
        state = api.get_rollout(rollout["id"])["state"]
        if state != "complete":
            raise RuntimeError(f"rollout ended {state}")
        require(
            lambda: all(a.journal_state() == "committed" for a in self.agents.values()),
            120,
            "every agent to commit the bundle",
        )
        log(
            self.console,
            f"{len(self.ids)} agents serving {bundle['id']}, set up in "
            f"{time.monotonic() - started:.0f} s; through the proxy: "
            + (", ".join(sorted(self.proxied)) or "none"),
        )
        x = model.holdout_x[:1].astype(np.float32)
        body = json.dumps({"inputs": [encode_tensor("input", x)]}).encode()
        self.ledger = Ledger(self.ids)
        ports = {d: a.port for d, a in self.agents.items()}
        self.load = LoadDriver(ports, self.o.rate, body, self.ledger)
        self.store = Store(self.live_apis)

    def start_control_planes(self) -> None:
        """One control plane on SQLite, or ``--replicas`` in docs/replicas.md's layout,
        the first (which initialises the database and shared directory) before the next."""
        if self.o.replicas < 2:
            self.cp = ControlPlane(self.root, self.broker.url)
            self.replicas = [self.cp]
            self.cp.start()
            return
        self.database = Database(self.o.postgres)
        shared = {
            "EDGEFLEET_DATABASE_URL": self.database.create(),
            "EDGEFLEET_SHARED_DIR": str(self.root / "shared"),
            "EDGEFLEET_BROKER_URL": self.broker.url,
            "EDGEFLEET_MQTT_SHARED_GROUP": SHARED_GROUP,
        }
        for n in range(self.o.replicas):
            token = self.replicas[0].token if self.replicas else None
            replica = ControlPlane(
                self.root, self.broker.url, name=f"cp-{chr(ord('a') + n)}", shared=shared,
                token=token,
            )  # fmt: skip
            self.replicas.append(replica)
            replica.start()
        self.cp = self.replicas[0]

    def live_apis(self) -> list[ApiClient]:
        return [cp.api for cp in self.replicas if cp.api is not None and cp.alive()]

    def stop(self) -> None:
        if self.load is not None:
            self.load.stop()
        for agent in self.agents.values():
            agent.stop()
        if self.proxy is not None:
            self.proxy.close()
        for cp in self.replicas:
            cp.close()
        self.broker.stop()
        if self.database is not None:
            try:
                self.database.drop()
            except RuntimeError as e:
                log(self.console, f"[red]could not drop {self.database.name}:[/] {e}")

    # -- helpers --------------------------------------------------------------------------

    def stored(self) -> Stored:
        assert self.store is not None
        return self.store.read()

    def quiesce(self, devices: list[str]) -> None:
        """Pause the load on ``devices`` and let their open window close into the spool."""
        assert self.load is not None
        self.load.pause(devices)
        time.sleep(self.o.window + CLOSE_MARGIN_S)

    def restart_agent(self, device: str, telemetry: dict[str, float] | None = None) -> None:
        """Quiesce, stop (SIGTERM), reconfigure and start one agent; its load resumes."""
        assert self.load is not None
        agent = self.agents[device]
        self.quiesce([device])
        agent.stop()
        agent.configure(telemetry)
        agent.start()
        if not agent.wait_ready():
            raise RuntimeError(f"{device} did not come back: {agent.last_log_line()}")
        self.load.resume([device])

    # -- one scenario -----------------------------------------------------------------------

    def measure(self, name: str, title: str, inject: Callable[[], Fault]) -> ScenarioResult:
        assert self.load is not None and self.ledger is not None
        ledger = self.ledger
        ledger0 = ledger.counts()
        stored0 = self.stored()
        errors0 = ledger.errors()
        self.load.resume()
        time.sleep(self.o.settle)
        log(self.console, f"[bold]{name}[/]: {title}")
        fault = inject()
        lag = self.o.window + 2 * CLOSE_MARGIN_S

        def counted(stored: Stored, device: str) -> int:
            got = stored.inferences.get(device, 0) - stored0.inferences.get(device, 0)
            if device in fault.capped:  # what a capped spool says it dropped counts too
                before = stored0.reported.get(device, Reported()).inferences or 0
                got += (stored.reported.get(device, Reported()).inferences or 0) - before
            return got

        def caught_up() -> float | None:
            cutoff = time.monotonic() - lag
            stored = self.stored()
            behind = [
                d
                for d in self.ids
                if counted(stored, d) < ledger.count(d, before=cutoff) - ledger0[d]
            ]
            return None if behind else time.monotonic()  # after the read: never early

        converged_at = wait_until(caught_up, self.o.converge_timeout)
        converged = None if converged_at is None else max(0.0, converged_at - fault.healed_at)
        self.load.pause()
        time.sleep(self.o.window + CLOSE_MARGIN_S)
        expected = ledger.counts()

        def exact() -> Stored | None:
            stored = self.stored()
            if all(counted(stored, d) == expected[d] - ledger0[d] for d in self.ids):
                return stored
            return None

        # A window sent just before the pause can still be stranded (on a dead replica's
        # session, say): the agent sends it again once its receipt timeout has passed.
        final_wait = (
            max(self.o.converge_timeout / 4, self.o.receipt_timeout + 2 * CLOSE_MARGIN_S)
            if converged is not None
            else 2 * self.o.window
        )
        final = wait_until(exact, final_wait)
        stored = final or self.stored()
        errors = ledger.errors()
        rows = []
        for d in self.ids:
            want = expected[d] - ledger0[d]
            got = stored.inferences.get(d, 0) - stored0.inferences.get(d, 0)
            before = stored0.reported.get(d, Reported())
            after = stored.reported.get(d, Reported())
            inferences = None
            if after.inferences is not None:
                inferences = after.inferences - (before.inferences or 0)
            rows.append(
                DeviceOutcome(
                    device_id=d,
                    expected=want,
                    stored=got,
                    lost=max(0, want - got),
                    duplicated=max(0, got - want),
                    reported_events=after.events - before.events,
                    reported_inference_events=after.inference_events - before.inference_events,
                    reported_inferences=inferences,
                    refused=errors[d][0] - errors0[d][0],
                    unanswered=errors[d][1] - errors0[d][1],
                    failed=errors[d][2] - errors0[d][2],
                )
            )
        notes = list(fault.notes)
        off = [r for r in rows if r.lost or r.duplicated]
        if off:
            notes.append(
                f"{len(off)} of {len(rows)} devices off the ledger: "
                + ", ".join(f"{r.device_id} {r.stored - r.expected:+d}" for r in off[:5])
                + (" …" if len(off) > 5 else "")
            )
        notes.extend(self._recover(fault))
        reported = [r.reported_inferences for r in rows if r.reported_inferences is not None]
        result = ScenarioResult(
            name=name,
            title=title,
            devices=len(rows),
            expected=sum(r.expected for r in rows),
            stored=sum(r.stored for r in rows),
            lost=sum(r.lost for r in rows),
            duplicated=sum(r.duplicated for r in rows),
            reported_events=sum(r.reported_events for r in rows),
            reported_inference_events=sum(r.reported_inference_events for r in rows),
            reported_inferences=sum(reported) if reported else None,
            refused=sum(r.refused for r in rows),
            unanswered=sum(r.unanswered for r in rows),
            converged_s=converged,
            converge_timeout_s=self.o.converge_timeout,
            exact=final is not None,
            ok=final is not None and converged is not None and not fault.failed,
            capped=sorted(fault.capped),
            notes=notes,
            per_device=rows,
            rollout=fault.rollout,
        )
        log(self.console, summary_line(result))
        return result

    def _recover(self, fault: Fault) -> list[str]:
        """Undo the scenario's set-up and restart whatever died, so the next one starts
        from a whole system (the load is paused here)."""
        notes = []
        if fault.undo is not None:
            fault.undo()
        for agent in self.agents.values():
            if not agent.alive():
                notes.append(
                    f"{agent.device_id} had exited ({agent.exit_code()}): "
                    f"{agent.last_log_line()}; restarted"
                )
                agent.start()
                agent.wait_ready()
        for cp in self.replicas:
            if not cp.alive():
                notes.append(f"{cp.name} had exited; restarted")
                cp.start()
        return notes

    # -- the faults -----------------------------------------------------------------------

    def broker_stop(self) -> Fault:
        pid = pid_running_with(str(self.broker.data_dir / "mosquitto.conf"))
        if pid is None:
            raise RuntimeError("cannot find the mosquitto process")
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.o.stop_seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return Fault(time.monotonic(), notes=[f"stopped {self.o.stop_seconds:g} s"])

    def broker_kill(self) -> Fault:
        self.broker.kill()
        time.sleep(self.o.broker_down)
        self.broker.start()
        notes = [f"down {self.o.broker_down:g} s"]
        if not (self.broker.data_dir / "mosquitto.db").exists():
            notes.append("no mosquitto.db: the broker persisted nothing")
        return Fault(time.monotonic(), notes=notes)

    def cp_kill(self) -> Fault:
        assert self.cp is not None
        self.cp.kill()
        time.sleep(self.o.cp_down)
        healed = time.monotonic()
        self.cp.start()
        return Fault(healed, notes=[f"down {self.o.cp_down:g} s"])

    def agent_kill_replay(self) -> Fault:
        assert self.proxy is not None and self.load is not None
        device = self.replayer
        agent = self.agents[device]
        # A slow replay (2 events/s, 2 in flight), so that the kill lands in the middle of it.
        self.restart_agent(device, {"replay_per_s": 2.0, "max_inflight": 2})
        self.proxy.cut(device)
        time.sleep(self.o.outage)
        self.quiesce([device])  # its last window into the spool, before the heal
        acked0 = int(agent.status().get("telemetry_acked", 0))
        depth0 = agent.status().get("spool_depth")
        self.proxy.heal(device)
        replaying = wait_until(
            lambda: int(agent.status().get("telemetry_acked", 0)) >= acked0 + 3,
            self.o.converge_timeout,
        )
        depth = agent.status().get("spool_depth")
        agent.kill()
        notes = [
            f"{device} cut off {self.o.outage:g} s; spool depth {depth0} at heal, "
            f"{depth} at kill -9" + ("" if replaying else " (the replay had not started)")
        ]
        time.sleep(1.0)
        agent.configure()  # the default replay rate again
        agent.start()
        healed = time.monotonic()
        self.load.resume([device])  # requests refused while it starts show as refused
        failed = not agent.wait_ready()
        if failed:
            notes.append(f"{device} did not come back: {agent.last_log_line()}")
        return Fault(healed, notes=notes, failed=failed)

    def spool_overflow(self) -> Fault:
        assert self.proxy is not None
        device = self.capped
        self.restart_agent(device, {"spool_max_mb": round(self.o.spool_cap_kib / 1024, 6)})
        self.proxy.cut(device)
        time.sleep(self.o.long_outage)
        spool = self.agents[device].data_dir / SPOOL_FILE
        sizes = {p.name: p.stat().st_size for p in sorted(spool.parent.glob(SPOOL_FILE + "*"))}
        self.proxy.heal(device)
        healed = time.monotonic()
        notes = [
            f"{device}: spool cap {self.o.spool_cap_kib:g} KiB, cut off {self.o.long_outage:g} s; "
            "on disk before the heal: "
            + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items())
        ]

        def undo() -> None:  # back to the run's spool size (the load is paused here)
            agent = self.agents[device]
            agent.stop()
            agent.configure()
            agent.start()
            agent.wait_ready()

        return Fault(healed, capped={device}, notes=notes, undo=undo)

    def spool_corrupt(self) -> Fault:
        assert self.load is not None
        device = self.corrupted
        agent = self.agents[device]
        self.quiesce([device])
        depth = agent.status().get("spool_depth")
        agent.stop()
        spool = agent.data_dir / SPOOL_FILE
        with spool.open("r+b") as f:
            f.write(b"\xa5" * 100)  # the 100-byte SQLite database header
        agent.start()
        healed = time.monotonic()
        self.load.resume([device])  # requests refused while it is down show as refused
        notes = [f"{device}: spool header overwritten (depth {depth} at stop)"]
        failed = not agent.wait_ready()
        if failed:
            notes.append(
                f"the agent did not start (exit {agent.exit_code()}): {agent.last_log_line()}"
            )
            for path in spool.parent.glob(SPOOL_FILE + "*"):
                path.replace(path.with_name(path.name + ".chaos-corrupt"))
            agent.start()
            if agent.wait_ready():
                notes.append("the benchmark moved the spool aside to go on")
        return Fault(healed, notes=notes, failed=failed)

    def partition(self) -> Fault:
        assert self.proxy is not None
        group = list(self.partitioned)
        half = (len(group) + 1) // 2
        stalled, cut = group[:half], group[half:]
        for device in stalled:
            self.proxy.stall(device)
        for device in cut:
            self.proxy.cut(device)
        time.sleep(self.o.outage)
        for device in group:
            self.proxy.heal(device)
        text = f"{self.o.outage:g} s: stalled {', '.join(stalled)}"
        return Fault(time.monotonic(), notes=[text + (f"; cut {', '.join(cut)}" if cut else "")])

    def poison(self) -> Fault:
        assert self.cp is not None
        device = self.poisoner
        # The ACL ties fleet/<id>/up/# to username <id>. This broker is anonymous: the
        # sender uses the device id as its username and a client id of its own (the
        # device's own would take over the agent's session).
        sender = MqttLink(client_id=f"{device}-poison", broker=self.broker.address, username=device)
        notes = []
        sent = 0
        sender.start()
        try:
            if not sender.wait_connected(30):
                raise RuntimeError("the poison sender could not connect")
            for channel in topics.Up:
                for payload in (POISON_BIG, POISON_NESTED):
                    request = channel is topics.Up.FETCH  # a fetch needs these to be read
                    try:
                        sender.publish(
                            topics.up(device, channel),
                            payload,
                            qos=1,
                            wait=30,
                            correlation=b"chaos" if request else None,
                            response_topic=topics.down(device, topics.Down.FETCH)
                            if request
                            else None,
                        )
                        sent += 1
                    except TransportError as e:
                        notes.append(f"{channel} poison not acknowledged: {e}")
        finally:
            sender.stop()
        notes.append(f"{sent} poison messages from {device} (QoS 1, not retained)")
        time.sleep(self.o.poison_hold)
        notes.append(
            f"control plane {self.o.poison_hold:g} s later: "
            + ("running" if self.cp.alive() else "exited")
            + f", health {self.cp.health()}; then restarted (SIGTERM)"
        )
        self.cp.stop()
        healed = time.monotonic()  # converged: from the restart, as for cp-kill
        self.cp.start()
        return Fault(healed, notes=notes)

    def replica_kill(self) -> Fault:
        """A rollout in waves; kill -9 the last replica when wave ``kill_wave`` starts."""
        assert self.next_bundle is not None and len(self.replicas) >= 2
        survivor, victim = self.replicas[0], self.replicas[-1]
        assert survivor.api is not None and victim.api is not None
        waves: list[int | str] = [1, "33%", "66%", "100%"]
        rollout = victim.api.create_rollout(  # created through the replica about to die
            bundle_id=self.next_bundle,
            device_ids=self.ids,
            waves=waves,
            soak_seconds=self.o.soak,
            gates={"max_error_rate": 0.05, "max_install_failure_rate": 0.0},
        )
        watch = RolloutWatch(survivor.api, int(rollout["id"]))
        notes: list[str] = []
        try:
            started = wait_until(
                lambda: (
                    (r := watch.state()).get("wave", 0) >= self.o.kill_wave
                    or r.get("state") not in (None, "draft", "in_progress")
                ),
                self.o.converge_timeout,
                poll=0.02,
            )
            killed_at = time.time()
            healed = time.monotonic()
            victim.kill()
            if not started or watch.state().get("wave", 0) < self.o.kill_wave:
                notes.append(f"the kill came late: rollout {watch.state().get('state')}")
            wait_until(
                lambda: watch.state().get("state") not in (None, "draft", "in_progress"),
                self.o.converge_timeout,
            )
        finally:
            watch.stop()
        final = watch.state()
        installs = watch.timings(killed_at)
        baseline = [t.seconds for t in installs if not t.after_kill and t.seconds is not None]
        stalls = [t.seconds for t in installs if t.after_kill and t.seconds is not None]
        base_p50, base_max = p50_max(baseline)
        stall_p50, stall_max = p50_max(stalls)
        complete = final.get("state") == "complete"
        completed_at = epoch(final.get("updated_at")) if complete else None
        starts = survivor.api.list_audit(rollout_id=int(rollout["id"]), action="rollout.wave_start")
        figures = RolloutFigures(
            bundle_id=self.next_bundle,
            rollout_id=int(rollout["id"]),
            waves=[int(w["size"]) for w in final.get("wave_status", [])],
            soak_s=self.o.soak,
            killed=victim.name,
            kill_wave=self.o.kill_wave,
            state=str(final.get("state")),
            complete_after_kill_s=None if completed_at is None else completed_at - killed_at,
            baseline_installs=len(baseline),
            baseline_p50_s=base_p50,
            baseline_max_s=base_max,
            stalled_installs=len(stalls),
            stall_p50_s=stall_p50,
            stall_max_s=stall_max,
            stall_goal_s=STALL_GOAL_S,
            waves_started=sorted(int(e["detail"]["wave"]) for e in starts),
            offers={d: a.offers_received(self.next_bundle) for d, a in self.agents.items()},
            api_polls=watch.polls,
            api_failures=watch.failures,
            installs=installs,
        )
        over = stall_max is not None and stall_max >= STALL_GOAL_S
        after = f" {seconds_cell(figures.complete_after_kill_s)} after the kill" if complete else ""
        notes[:0] = [
            f"{victim.name} killed -9 as wave {self.o.kill_wave} started; rollout "
            f"{figures.state}{after}",
            f"installs before the kill: p50 {seconds_cell(base_p50)}, max "
            f"{seconds_cell(base_max)} (n={len(baseline)})",
            f"stall after the kill: p50 {seconds_cell(stall_p50)}, max "
            f"{seconds_cell(stall_max)} (n={len(stalls)}; goal < {STALL_GOAL_S:g} s"
            + (": missed)" if over else ")"),
            f"waves started {figures.waves_started} (sizes {figures.waves}); offers per "
            f"device {sorted(set(figures.offers.values()))}; {survivor.name} failed "
            f"{watch.failures} of {watch.polls} API polls",
        ]
        return Fault(healed, notes=notes, failed=not complete, rollout=figures)

    def scenarios(self) -> dict[str, tuple[str, Callable[[], Fault]]]:
        o = self.o
        return {
            "broker-stop": (f"broker SIGSTOP {o.stop_seconds:g} s", self.broker_stop),
            "broker-kill": (f"broker SIGKILL, {o.broker_down:g} s down", self.broker_kill),
            "cp-kill": ("control plane kill -9, restart", self.cp_kill),
            "agent-kill-replay": ("agent kill -9 mid-replay", self.agent_kill_replay),
            "spool-overflow": (
                f"spool cap {o.spool_cap_kib:g} KiB, {o.long_outage:g} s outage",
                self.spool_overflow,
            ),
            "spool-corrupt": ("spool header overwritten", self.spool_corrupt),
            "partition": (f"proxy stall/cut {o.outage:g} s", self.partition),
            "replica-kill": (
                f"replica kill -9 mid-rollout, soak {o.soak:g} s",
                self.replica_kill,
            ),
            "poison": ("poison on every up topic", self.poison),
        }

    def run(self) -> None:
        """The steady baseline, then each scenario; ``results`` keeps what finished."""
        no_fault = lambda: Fault(time.monotonic(), notes=["baseline"])  # noqa: E731
        self.results.append(self.measure("steady", "no fault", no_fault))
        available = self.scenarios()
        for name in self.o.scenarios:
            title, inject = available[name]
            self.results.append(self.measure(name, title, inject))


# -- output ------------------------------------------------------------------------------


def reported_cell(r: ScenarioResult) -> str:
    if not r.reported_events and r.reported_inferences is None:
        return "-"
    inferences = "?" if r.reported_inferences is None else f"{r.reported_inferences:,}"
    return (
        f"{r.reported_events:,} events ({r.reported_inference_events:,} inference) / "
        f"{inferences} inferences"
    )


def converged_cell(r: ScenarioResult) -> str:
    if r.converged_s is None:
        return f"not in {r.converge_timeout_s:.0f} s"
    return f"{r.converged_s:.1f} s"


def summary_line(r: ScenarioResult) -> str:
    verdict = "[green]ok[/]" if r.ok else "[red]NOT OK[/]"
    return (
        f"  {verdict}: expected {r.expected:,}, stored {r.stored:,}, lost {r.lost:,}, "
        f"duplicated {r.duplicated:,}, reported dropped {reported_cell(r)}, "
        f"converged {converged_cell(r)}"
    )


def render_table(results: list[ScenarioResult], options: Options) -> Table:
    replicas = f", {options.replicas} replicas on PostgreSQL" if options.replicas > 1 else ""
    table = Table(
        title=f"chaos: {options.agents} agents{replicas}, {options.rate:g} requests/s each, "
        f"telemetry window {options.window:g} s, {os.cpu_count()} cores"
    )
    table.add_column("scenario")
    for column in ("devices", "expected", "stored", "lost", "dup", "reported dropped"):
        table.add_column(column, justify="right")
    table.add_column("refused", justify="right")
    table.add_column("converged", justify="right")
    table.add_column("")
    table.add_column("notes")
    for r in results:
        off = sum(1 for d in r.per_device if d.lost or d.duplicated)
        table.add_row(
            f"{r.name}\n[dim]{r.title}[/]",
            f"{r.devices}" + (f" ({off} off)" if off else ""),
            f"{r.expected:,}",
            f"{r.stored:,}",
            f"{r.lost:,}",
            f"{r.duplicated:,}",
            reported_cell(r),
            f"{r.refused:,}" + (f" +{r.unanswered} t/o" if r.unanswered else ""),
            converged_cell(r),
            "[green]ok[/]" if r.ok else "[red]✗[/]",
            "\n".join(r.notes),
        )
    return table


# -- entry point -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Options]:
    d = Options()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--agents", type=int, default=d.agents, help="agent processes (at least 3)")
    add("--rate", type=float, default=d.rate, help="inference requests/s per agent")
    add("--window", type=float, default=d.window, help="the agents' telemetry window, s")
    add("--stop-seconds", type=float, default=d.stop_seconds, help="broker SIGSTOP, s")
    add("--broker-down", type=float, default=d.broker_down, help="broker down after SIGKILL, s")
    add("--cp-down", type=float, default=d.cp_down, help="control plane down after kill -9, s")
    add("--outage", type=float, default=d.outage, help="partition and replay outage, s")
    add("--long-outage", type=float, default=d.long_outage, help="spool-overflow outage, s")
    add("--poison-hold", type=float, default=d.poison_hold, help="s before the cp restart")
    add("--spool-cap-kib", type=float, default=d.spool_cap_kib, help="the capped agent's spool")
    add("--settle", type=float, default=d.settle, help="steady load before each fault, s")
    add("--converge-timeout", type=float, default=d.converge_timeout, help="bound per wait, s")
    add("--reconnect-max", type=float, default=None, help="agents' [link] reconnect_max_s")
    add(
        "--receipt-timeout",
        type=float,
        default=d.receipt_timeout,
        help="agents' [telemetry] receipt_timeout_s: unreceipted events are sent again after it",
    )
    add("--replicas", type=int, default=d.replicas, help="control-plane replicas (1 or 2)")
    add("--postgres", default=d.postgres, help="admin DSN of the server for --replicas 2")
    add("--soak", type=float, default=d.soak, help="replica-kill: each wave's soak, s")
    add("--kill-wave", type=int, default=d.kill_wave, help="replica-kill: kill as it starts")
    add("--short", action="store_true", help="every duration scaled down (a few minutes)")
    add("--scenarios", default=None, help=f"comma-separated, of {','.join(SCENARIO_ORDER)}")
    add("--data-dir", type=Path, default=None, help="keep logs, databases and spools here")
    add("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.agents < 3:
        parser.error("--agents must be at least 3")
    if args.short:
        args.stop_seconds = min(args.stop_seconds, 10.0)
        args.broker_down = min(args.broker_down, 5.0)
        args.cp_down = min(args.cp_down, 2.0)
        args.outage = min(args.outage, 10.0)
        args.long_outage = min(args.long_outage, 45.0)
        args.poison_hold = min(args.poison_hold, 3.0)
        args.spool_cap_kib = min(args.spool_cap_kib, 12.0)
        args.settle = min(args.settle, 3.0)
        args.converge_timeout = min(args.converge_timeout, 60.0)
        args.receipt_timeout = min(args.receipt_timeout, 5.0)
    if args.scenarios:
        scenarios = args.scenarios.split(",")
    else:
        scenarios = [s for s in SCENARIO_ORDER if args.replicas > 1 or s not in NEEDS_REPLICAS]
    unknown = [s for s in scenarios if s not in SCENARIO_ORDER]
    if unknown:
        parser.error(f"unknown scenarios {unknown}; choose from {SCENARIO_ORDER}")
    if NEEDS_REPLICAS & set(scenarios):
        args.replicas = max(args.replicas, 2)
    if not 1 <= args.replicas <= 2:
        parser.error("--replicas must be 1 or 2")
    if not 2 <= args.kill_wave <= 4:
        parser.error("--kill-wave must be 2, 3 or 4 (the rollout's waves: 1, 33 %, 66 %, 100 %)")
    options = Options(
        agents=args.agents,
        rate=args.rate,
        window=args.window,
        stop_seconds=args.stop_seconds,
        broker_down=args.broker_down,
        cp_down=args.cp_down,
        outage=args.outage,
        long_outage=args.long_outage,
        poison_hold=args.poison_hold,
        spool_cap_kib=args.spool_cap_kib,
        settle=args.settle,
        converge_timeout=args.converge_timeout,
        reconnect_max=args.reconnect_max,
        receipt_timeout=args.receipt_timeout,
        replicas=args.replicas,
        postgres=args.postgres,
        soak=args.soak,
        kill_wave=args.kill_wave,
        scenarios=scenarios,
    )
    return args, options


@contextlib.contextmanager
def run_directory(keep: Path | None) -> Iterator[Path]:
    root = keep or Path(tempfile.mkdtemp(prefix="edgefleet-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    let_broker_enter(root)  # started by root, the broker runs as `mosquitto`, as `up` does
    try:
        yield root
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args, options = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = 160  # a log or a pipe: keep the table readable
    started = time.monotonic()
    aborted: str | None = None
    with run_directory(args.data_dir) as root:
        chaos = Chaos(root, options, console)
        try:
            chaos.start()
            chaos.run()
        except (RuntimeError, TimeoutError, ApiError, OSError) as e:
            aborted = f"{type(e).__name__}: {e}"
            console.print(f"[bold red]run aborted:[/] {aborted}")
        finally:
            chaos.stop()
    results = chaos.results
    if results:
        console.print(render_table(results, options))
        expected = sum(r.expected for r in results)
        stored = sum(r.stored for r in results)
        console.print(
            f"all phases: {expected:,} inferences answered, {stored:,} counted "
            f"({stored - expected:+,}); the benchmark took {time.monotonic() - started:.0f} s"
        )
    if args.json is not None:
        payload = {
            "options": asdict(options),
            "aborted": aborted,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    if aborted is not None:
        return 2
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
