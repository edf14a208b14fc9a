"""Fleet simulator: a ~1 MB signed bundle rolled out through waves to 200 and 1,000 devices.

Everything is real except the hardware: a private Mosquitto on a free port, the
control plane as its own process (FastAPI + SQLite + signed TUF repository + fleet
link, as ``edgefleet demo`` starts it), and simulated devices spread over a few
worker processes (``bench/fleetsim.py``), each device with its own MQTT session,
device id and data directory, verifying with python-tuf over MQTT and installing
with the agent's own installer (slot, smoke test in onnxruntime, journal, switch).

The bundle carries a digits MLP trained here with enough hidden units for a ~1 MB
float ONNX model, built through the converter pipeline for a gateway profile that
ships fp32 (a copy of ``x86-64-gateway-onnx`` without int8, so the bundle keeps the
float model's size instead of whichever candidate the gate would pick).

For each fleet size, in this order, with the same worker processes:

1. baseline: the broker's own fan-out of the same bytes: the bundle file published
   once, in the fetcher's chunk size, QoS 1, to one plain paho subscriber per
   device (same processes, same network threads); time until every subscriber has
   every chunk;
2. rollout: waves ``1, 10%, 50%, 100%``, soak 0; wall time from ``POST /rollouts``
   to the last device reporting ``active``, per wave, and the install time each
   device reported (offer received -> active); and what the control plane sent for
   it: payload bytes by path (its ``edgefleet_delivery_bytes_total``: fetch answers
   for metadata and targets, retained blob chunks) and the bytes its sockets to the
   broker sent (``ss``), each per device and against the bundle's size;
3. telemetry: every device publishes inference windows (the agent's own
   ``TelemetryEvent``) on its ``up/telemetry`` topic as fast as QoS 1 allows; the
   offered rate is what the broker acknowledged per second, the ingest rate is rows
   stored in the control plane's events table per second (MQTT -> link -> SQLite).

    .venv/bin/python bench/fleet_rollout.py                  # 200 and 1,000 devices
    .venv/bin/python bench/fleet_rollout.py --quick          # 8 devices, small model
    .venv/bin/python bench/fleet_rollout.py --devices 500 --workers 4 --data-dir /tmp/f
    .venv/bin/python bench/fleet_rollout.py --devices 1000 --delivery fetch   # the old path

``--delivery blobs`` (the default) is how a fleet gets a bundle now: the control
plane publishes the target once as retained chunks and the broker serves every
device; ``--delivery fetch`` turns that off on both sides (every chunk of every
device by request/response from the control plane), for the comparison.

Exit status 1 when a device did not end up active or events went missing.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import httpx
from fleetsim import DeviceRecord, WorkerSpec, run_worker
from fleetsim_async import run_async_worker
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from threadpoolctl import threadpool_limits

from edgefleet.agent.config import FetchConfig
from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.client import ApiClient, ApiError
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.mqtt import MqttLink
from edgefleet.profile import default_profiles_dir, load_profile
from edgefleet_demo.digits import train_digits_model

MODEL = "fleetsim"
BASE_PROFILE = "x86-64-gateway-onnx"
PROFILE = "x86-64-gateway-fp32"
WAVES: list[int | str] = [1, "10%", "50%", "100%"]
GATES = {"max_install_failure_rate": 0.05}
FULL_HIDDEN = 3400  # 64 -> 3400 -> 10 float32: a 1.02 MB ONNX model
FULL_EPOCHS = 30
QUICK_HIDDEN = 64
QUICK_EPOCHS = 100
FDS_PER_CLIENT = 3  # paho: the TCP session plus its wake-up socketpair
SELECT_FD_LIMIT = 1024  # paho's loop uses select(), which cannot watch fds >= FD_SETSIZE
FD_RESERVE = 150  # interpreter, libraries, files an install has open
MAX_CLIENTS_PER_WORKER = (SELECT_FD_LIMIT - FD_RESERVE) // FDS_PER_CLIENT
THREADS_PER_DEVICE = 3  # paho network thread, offer worker, onnxruntime's pool thread
RUNNING = ("draft", "in_progress", "paused")
NA = "-"


@dataclass
class WaveResult:
    wave: int
    devices: int
    started_s: float  # after POST /rollouts
    all_active_s: float | None  # wave start -> last device of the wave active


@dataclass
class FleetResult:
    devices: int
    workers: int
    connect_s: float
    baseline_s: float | None
    baseline_incomplete: int
    rollout_state: str
    rollout_reason: str | None
    all_active_s: float | None  # POST /rollouts -> last device active (device clocks)
    complete_s: float | None  # POST /rollouts -> the control plane recorded it complete
    waves: list[WaveResult]
    install_s: list[float]
    active: int
    failed: dict[str, str]
    cp_states: dict[str, int]
    events_published: int
    events_acked: int
    events_stored: int
    offered_per_s: float
    stored_per_s: float
    ingest_s: float
    rollout_cpu: dict[str, float] = field(default_factory=dict)
    telemetry_cpu: dict[str, float] = field(default_factory=dict)
    delivery: str = "blobs"
    bundle_length: int = 0
    cp_payload: dict[str, int] = field(default_factory=dict)  # rollout's delivery bytes by path
    cp_wire_bytes: int | None = None  # the control plane's sockets to the broker, sent
    fetch_retries: int = 0
    blob_fallbacks: int = 0
    downloads_resumed: int = 0
    reconnects: int = 0
    not_active: list[str] = field(default_factory=list)
    sim: str = "threads"
    api_latency_ms: dict[str, list[float]] = field(default_factory=dict)  # during the rollout

    @property
    def ok(self) -> bool:
        return (
            self.active == self.devices
            and self.rollout_state == "complete"
            and self.events_stored == self.events_published
        )

    @property
    def cp_bytes_per_device(self) -> float:
        return sum(self.cp_payload.values()) / max(self.devices, 1)

    @property
    def ratio(self) -> float | None:
        if self.all_active_s is None or not self.baseline_s:
            return None
        return self.all_active_s / self.baseline_s


@dataclass
class Bundle:
    id: str
    release: int
    length: int
    model_bytes: int
    path: Path


# -- limits ----------------------------------------------------------------------------


def plan_workers(devices: int, wanted: int, sim: str = "threads") -> int:
    """Worker processes for ``devices``: at least ``wanted``, more if select() would overflow
    (the thread simulator's paho loop; the asyncio simulator uses epoll)."""
    if sim == "async":
        return wanted
    return max(wanted, math.ceil(devices / MAX_CLIENTS_PER_WORKER))


def check_limits(devices: int, console: Console, sim: str = "threads") -> None:
    """Raise the open-files limit if needed; fail early, naming the limit, if it cannot be.

    Mosquitto holds one socket per device (the baseline's subscribers are gone before
    the devices connect), and inherits this process's limit, as do the workers; with
    the thread simulator each device costs about three threads in its worker.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = devices + 1024
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise SystemExit(f"open files limit {hard} < {need} needed: raise `ulimit -n`")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        console.print(f"raised open files limit {soft} -> {need}")
    if sim == "async":
        return  # one task per device, no threads
    threads = THREADS_PER_DEVICE * devices + 200
    for name, path in (
        ("threads-max", "/proc/sys/kernel/threads-max"),
        ("pid_max", "/proc/sys/kernel/pid_max"),
    ):
        try:
            limit = int(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if limit < 2 * threads:
            raise SystemExit(f"kernel {name} {limit} is too low for ~{threads} threads")
    nproc, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if nproc != resource.RLIM_INFINITY and nproc < 2 * threads:
        raise SystemExit(f"`ulimit -u` {nproc} is too low for ~{threads} threads")


# -- the system under test -------------------------------------------------------------


def write_profile(directory: Path) -> Path:
    """The fp32-only gateway profile: the shipped x86-64 one with int8 taken out."""
    text = (default_profiles_dir() / f"{BASE_PROFILE}.toml").read_text()
    replaced = text.replace(f'name = "{BASE_PROFILE}"', f'name = "{PROFILE}"').replace(
        'precisions = ["fp32", "int8"]', 'precisions = ["fp32"]'
    )
    if replaced.count(PROFILE) != 1 or 'precisions = ["fp32"]' not in replaced:
        raise SystemExit(f"{BASE_PROFILE}.toml changed shape; update bench/fleet_rollout.py")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{PROFILE}.toml"
    path.write_text(replaced)
    load_profile(path)  # the same validation the control plane applies
    return path


class System:
    """Mosquitto and the control plane (a subprocess), both on free ports under ``root``."""

    def __init__(
        self, root: Path, *, tick_s: float, console: Console, blob_delivery: bool = True
    ) -> None:
        self.root = root
        self.blob_delivery = blob_delivery
        self.console = console
        self.tick_s = tick_s
        self.broker = MosquittoBroker(root / "broker")
        self.cp_dir = root / "control-plane"
        self.cp_log = root / "control-plane.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.api: ApiClient | None = None
        self._http: httpx.Client | None = None
        self.api_base = ""
        self.token: str | None = None

    def start(self) -> ApiClient:
        self.broker.start()
        profiles = self.root / "profiles"
        write_profile(profiles)
        port = free_port()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "EDGEFLEET_PROFILES_DIR": str(profiles),
            "EDGEFLEET_ROLLOUT_TICK_S": str(self.tick_s),
            "EDGEFLEET_BLOB_DELIVERY": "true" if self.blob_delivery else "false",
        }
        with self.cp_log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.control_plane", "serve", "--host", "127.0.0.1",
                 "--port", str(port), "--broker", self.broker.url,
                 "--data-dir", str(self.cp_dir), "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        probe = ApiClient(base, token="none")
        try:
            wait_until(lambda: self._healthy(probe), 60, "the control plane API")
        finally:
            probe.close()
        token_file = self.cp_dir / "admin.token"
        token = token_file.read_text().strip() if token_file.exists() else None
        self.api_base, self.token = base, token
        self.api = ApiClient(base, token=token, timeout=120)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=60)
        return self.api

    def count_events(self, kind: str) -> int:
        """Rows of ``kind`` in the control plane's events table (``GET /events/count``)."""
        assert self._http is not None
        response = self._http.get("/events/count", params={"kind": kind})
        response.raise_for_status()
        return int(response.json()["count"])

    def delivery_bytes(self) -> dict[str, int]:
        """The control plane's ``edgefleet_delivery_bytes_total`` by path, from ``/metrics``."""
        assert self._http is not None
        response = self._http.get(str(self._http.base_url).removesuffix("/api/v1/") + "/metrics")
        response.raise_for_status()
        return {
            m.group(1): int(float(m.group(2)))
            for m in re.finditer(
                r'^edgefleet_delivery_bytes_total\{path="([a-z_]+)"\} (\S+)$',
                response.text,
                re.MULTILINE,
            )
        }

    def wire_bytes(self) -> int | None:
        """Bytes the control plane's TCP connections to the broker have sent (``ss -ti``).

        On the wire, so MQTT framing, offers and receipts count too. None without ``ss``.
        """
        if self.process is None:
            return None
        try:
            out = subprocess.run(
                ["ss", "-tinpH", "state", "established", "dst", f"127.0.0.1:{self.broker.port}"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        total, ours = 0, False
        for line in out.splitlines():
            if not line.startswith(("\t", " ")):
                ours = f"pid={self.process.pid}," in line
                continue
            match = re.search(r"bytes_sent:(\d+)", line)
            if ours and match:
                total += int(match.group(1))
        return total

    def _healthy(self, probe: ApiClient) -> bool:
        self.check_alive()
        try:
            return probe.health().get("status") == "ok"
        except ApiError:
            return False

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.cp_log.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError("control plane exited:\n" + "\n".join(tail))

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        if self._http is not None:
            self._http.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.broker.stop()


def wait_until(predicate: Any, timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def build_bundle(system: System, api: ApiClient, *, quick: bool, console: Console) -> Bundle:
    """Train, register and build the bundle every simulated device will install."""
    hidden, epochs = (QUICK_HIDDEN, QUICK_EPOCHS) if quick else (FULL_HIDDEN, FULL_EPOCHS)
    started = time.monotonic()
    with threadpool_limits(1):  # BLAS threads spinning on two busy cores: 5-10x slower
        model = train_digits_model(hidden=(hidden,), max_iter=epochs)
    api.register_model(
        name=MODEL,
        version="1",
        model=model.onnx_bytes,
        samples=model.samples,
        holdout_x=model.holdout_x,
        holdout_y=model.holdout_y,
    )
    built = api.build_bundle(model=MODEL, version="1", profile=PROFILE)
    path = system.cp_dir / "bundles" / f"{built['id']}.tar"
    if not path.is_file() or path.stat().st_size != built["length"]:
        raise RuntimeError(f"built bundle not found at {path} (the baseline publishes it)")
    console.print(
        f"bundle {built['id']}: {built['length']:,} bytes (model {len(model.onnx_bytes):,} "
        f"bytes, holdout accuracy {model.holdout_accuracy:.3f}), trained and built in "
        f"{time.monotonic() - started:.1f} s"
    )
    return Bundle(built["id"], built["release"], built["length"], len(model.onnx_bytes), path)


# -- CPU per component ------------------------------------------------------------------


def children_cpu() -> dict[str, float]:
    """CPU seconds (user + system) used so far by each kind of child process.

    Read from ``/proc`` (Linux): which of broker, control plane and simulator is
    saturated tells what a figure measures on a machine with two shared cores.
    """
    pid = os.getpid()
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        if b"spawn_main" in cmdline:
            role = "simulator"
        elif b"control_plane" in cmdline:
            role = "control plane"
        elif b"mosquitto" in cmdline.split(b"\0")[0]:
            role = "mosquitto"
        else:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        used[role] = used.get(role, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return used


def cpu_since(before: dict[str, float]) -> dict[str, float]:
    """CPU seconds per component since the ``children_cpu()`` snapshot ``before``."""
    return {role: total - before.get(role, 0.0) for role, total in children_cpu().items()}


# -- worker processes ------------------------------------------------------------------


class Workers:
    """The simulator's worker processes and the pipe to each; every call is bounded."""

    def __init__(self, specs: list[WorkerSpec], sim: str = "threads") -> None:
        context = multiprocessing.get_context("spawn")
        target = run_async_worker if sim == "async" else run_worker
        self.specs = specs
        self.conns: list[Connection] = []
        self.processes: list[SpawnProcess] = []
        for spec in specs:
            parent, child = context.Pipe()
            process = context.Process(target=target, args=(child, spec), daemon=True)
            process.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(process)

    def send(self, command: str, args: dict[str, Any] | None = None) -> None:
        for conn in self.conns:
            conn.send((command, args))

    def send_each(self, command: str, args: list[dict[str, Any]]) -> None:
        for conn, arg in zip(self.conns, args, strict=True):
            conn.send((command, arg))

    def gather(self, timeout: float) -> list[Any]:
        """One reply from every worker; ``RuntimeError`` if one fails, dies or is silent."""
        deadline = time.monotonic() + timeout
        replies = []
        for spec, conn, process in zip(self.specs, self.conns, self.processes, strict=True):
            while not conn.poll(0.2):
                if not process.is_alive():
                    raise RuntimeError(f"worker {spec.index} died; see {spec.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {spec.index} silent for {timeout:.0f}s")
            status, reply = conn.recv()
            if status != "ok":
                raise RuntimeError(f"worker {spec.index}: {reply}")
            replies.append(reply)
        return replies

    def call(self, command: str, args: dict[str, Any] | None = None, timeout: float = 300) -> Any:
        self.send(command, args)
        return self.gather(timeout)

    def stop(self) -> None:
        try:
            self.call("stop", timeout=60)
        except (RuntimeError, OSError) as e:
            print(f"workers did not stop cleanly: {e}", file=sys.stderr)
        for process in self.processes:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()


# -- one fleet size --------------------------------------------------------------------


def parse_ts(value: str) -> float:
    """An API timestamp as epoch seconds (SQLite hands back naive UTC)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def run_baseline(
    workers: Workers, broker: MosquittoBroker, bundle: Bundle, counts: list[int], chunk: int
) -> tuple[float | None, int]:
    """Publish the bundle file once, chunk by chunk, to one plain subscriber per device."""
    data = bundle.path.read_bytes()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    topic = f"bench/fanout/{len(counts)}x{sum(counts)}"
    workers.send_each(
        "fanout_subscribe", [{"topic": topic, "chunks": len(chunks), "count": n} for n in counts]
    )
    subscribed = sum(r["subscribed"] for r in workers.gather(180))
    if subscribed != sum(counts):
        raise RuntimeError(f"only {subscribed} of {sum(counts)} baseline subscribers subscribed")
    publisher = MqttLink(client_id="cp-benchfanout", broker=broker.address, clean_start=True)
    publisher.start()
    if not publisher.wait_connected(30):
        raise RuntimeError("baseline publisher could not connect")
    try:
        started = time.monotonic()
        for piece in chunks:
            publisher.publish(topic, piece, qos=1)
        workers.send("fanout_wait", {"timeout": 600.0})
        replies = workers.gather(660)
    finally:
        publisher.stop()
    done = [t for r in replies for t in r["done_at"]]
    incomplete = sum(r["incomplete"] for r in replies)
    if not done or incomplete:
        return None, incomplete
    return max(done) - started, 0


class ApiLatency:
    """Operator requests during the rollout, timed: ``rollout status`` and ``device list``.

    One request at a time, alternating, a pause of ``PAUSE_S`` between them (an
    operator's console refreshing, not a load test), on a connection of its own. A
    request that fails counts with the time it took, under ``<name> errors``.
    """

    PAUSE_S = 0.25

    def __init__(self, base: str, token: str | None, rollout_id: int) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=f"{base}/api/v1", headers=headers, timeout=60)
        self._paths = {"rollout status": f"/rollouts/{rollout_id}", "device list": "/devices"}
        self.samples: dict[str, list[float]] = {name: [] for name in self._paths}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-latency", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(90)
        self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, path in self._paths.items():
                started = time.perf_counter()
                try:
                    ok = self._http.get(path).status_code == 200
                except httpx.HTTPError:
                    ok = False
                took = (time.perf_counter() - started) * 1000
                self.samples.setdefault(name if ok else f"{name} errors", []).append(took)
                if self._stop.wait(self.PAUSE_S):
                    return


def watch_rollout(api: ApiClient, system: System, rollout_id: int, total: int, timeout: float,
                  console: Console) -> dict[str, Any]:  # fmt: skip
    """Poll the rollout once a second until it ends (or ``timeout``); a live progress bar."""
    with Progress(
        TextColumn("[bold]rollout[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} active"),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("rollout", total=total, states="")
        deadline = time.monotonic() + timeout
        while True:
            system.check_alive()
            rollout = api.get_rollout(rollout_id)
            counts = rollout.get("counts", {})
            progress.update(
                task,
                completed=counts.get("active", 0),
                states=f"wave {rollout['wave']}/{rollout['wave_count']} "
                + " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
            )
            if rollout["state"] not in RUNNING or time.monotonic() > deadline:
                return rollout
            time.sleep(1.0)


def run_telemetry(system: System, workers: Workers, per_device: int, bundle: Bundle,
                  expected: int, timeout: float) -> dict[str, Any]:  # fmt: skip
    """Every device publishes ``per_device`` windows; poll the events table until all stored."""
    before = system.count_events("inference")
    workers.send(
        "telemetry",
        {"events_per_device": per_device, "bundle_id": bundle.id, "release": bundle.release},
    )
    stored_at: float | None = None
    deadline = time.monotonic() + timeout
    stored = 0
    while time.monotonic() < deadline:
        stored = system.count_events("inference") - before
        if stored >= expected:
            stored_at = time.monotonic()
            break
        time.sleep(0.1)
    replies = workers.gather(180)
    started = min(r["started"] for r in replies)
    acked_at = max(r["acked_at"] for r in replies)
    published = sum(r["published"] for r in replies)
    acked = sum(r["acked"] for r in replies)
    if stored_at is None:
        stored = system.count_events("inference") - before
    elapsed = (stored_at or time.monotonic()) - started
    return {
        "published": published,
        "acked": acked,
        "stored": stored,
        "offered_per_s": acked / max(acked_at - started, 1e-9),
        "stored_per_s": stored / max(elapsed, 1e-9),
        "ingest_s": elapsed,
    }


def run_fleet(
    system: System,
    api: ApiClient,
    bundle: Bundle,
    trust_root: Path,
    *,
    devices: int,
    wanted_workers: int,
    events_per_device: int,
    rollout_timeout: float,
    fetch: FetchConfig,
    console: Console,
    skip_model: bool = False,
    sim: str = "threads",
) -> FleetResult:
    n_workers = plan_workers(devices, wanted_workers, sim)
    if n_workers != wanted_workers:
        console.print(
            f"{devices} devices need {n_workers} workers (paho's select() keeps a process "
            f"under ~{MAX_CLIENTS_PER_WORKER} clients)"
        )
    ids = [f"dev-fleet{devices}n{i:05d}" for i in range(devices)]
    slices = [ids[w::n_workers] for w in range(n_workers)]
    fleet_dir = system.root / f"fleet-{devices}"
    specs = [
        WorkerSpec(
            index=w,
            broker_url=system.broker.url,
            trust_root=trust_root,
            profile=PROFILE,
            device_ids=slices[w],
            data_dir=fleet_dir / "devices",
            log_path=fleet_dir / f"worker-{w}.log",
            fetch=fetch,
            skip_model=skip_model,
        )
        for w in range(n_workers)
    ]
    fleet_dir.mkdir(parents=True, exist_ok=True)
    spawned = time.monotonic()
    workers = Workers(specs, sim)
    try:
        workers.call("ping", timeout=120)
        console.print(
            f"[bold]{devices} devices[/] in {n_workers} worker processes "
            f"(started in {time.monotonic() - spawned:.1f} s)"
        )
        baseline_s, baseline_incomplete = run_baseline(
            workers, system.broker, bundle, [len(s) for s in slices], fetch.chunk_kib * 1024
        )
        console.print(
            f"  broker fan-out baseline: {bundle.length:,} bytes to {devices} subscribers in "
            + (f"{baseline_s:.2f} s" if baseline_s else f"(incomplete: {baseline_incomplete})")
        )

        started = time.monotonic()
        replies = workers.call("start", timeout=300)
        connected = sum(r["connected"] for r in replies)
        if connected != devices:
            raise RuntimeError(f"only {connected} of {devices} devices connected")
        wanted = set(ids)
        wait_until(
            lambda: wanted <= {d["id"] for d in api.list_devices() if d.get("online")},
            120,
            f"the control plane to see {devices} devices online",
            poll=1.0,
        )
        connect_s = time.monotonic() - started
        console.print(f"  {devices} devices connected and known online in {connect_s:.1f} s")

        cpu_before = children_cpu()
        payload_before = system.delivery_bytes()
        wire_before = system.wire_bytes()
        created_at = time.time()
        rollout = api.create_rollout(
            bundle_id=bundle.id, device_ids=ids, waves=WAVES, soak_seconds=0, gates=GATES
        )
        latency = ApiLatency(system.api_base, system.token, rollout["id"])
        latency.start()
        try:
            rollout = watch_rollout(api, system, rollout["id"], devices, rollout_timeout, console)
        finally:
            latency.stop()
        rollout_cpu = cpu_since(cpu_before)
        payload_after = system.delivery_bytes()
        wire_after = system.wire_bytes()
        records: list[DeviceRecord] = [r for reply in workers.call("results") for r in reply]
        audit = api.list_audit(rollout_id=rollout["id"], limit=1000)
        result = summarize(rollout, records, audit, created_at, devices, n_workers)
        result.connect_s = connect_s
        result.rollout_cpu = rollout_cpu
        result.sim = sim
        result.api_latency_ms = latency.samples
        result.delivery = "blobs" if fetch.blobs else "fetch"
        result.bundle_length = bundle.length
        result.cp_payload = {
            path: count - payload_before.get(path, 0) for path, count in payload_after.items()
        }
        if wire_before is not None and wire_after is not None:
            result.cp_wire_bytes = wire_after - wire_before
        logs = [log.read_text(errors="replace") for log in fleet_dir.glob("worker-*.log")]
        result.fetch_retries = sum(text.count("fetch chunk timed out") for text in logs)
        result.blob_fallbacks = sum(
            text.count("blobs missing") + text.count("no blob index") for text in logs
        )
        result.downloads_resumed = sum(text.count("transfer interrupted") for text in logs)
        result.reconnects = sum(text.count("mqtt disconnected") for text in logs)
        result.baseline_s, result.baseline_incomplete = baseline_s, baseline_incomplete
        console.print(
            f"  rollout {result.rollout_state}: {result.active}/{devices} active, last one "
            + (f"{result.all_active_s:.1f} s" if result.all_active_s else "never")
            + " after POST /rollouts"
        )

        cpu_before = children_cpu()
        telemetry = run_telemetry(
            system, workers, events_per_device, bundle, devices * events_per_device, 300
        )
        result.telemetry_cpu = cpu_since(cpu_before)
        result.events_published = telemetry["published"]
        result.events_acked = telemetry["acked"]
        result.events_stored = telemetry["stored"]
        result.offered_per_s = telemetry["offered_per_s"]
        result.stored_per_s = telemetry["stored_per_s"]
        result.ingest_s = telemetry["ingest_s"]
        console.print(
            f"  telemetry: {result.events_stored:,}/{result.events_published:,} events stored "
            f"in {result.ingest_s:.1f} s"
        )
        return result
    finally:
        workers.stop()


def summarize(
    rollout: dict[str, Any],
    records: list[DeviceRecord],
    audit: list[dict[str, Any]],
    created_at: float,
    devices: int,
    n_workers: int,
) -> FleetResult:
    """Per-wave and per-device figures from the devices' records and the control plane."""
    by_id = {r.device_id: r for r in records}
    wave_of = {row["device_id"]: row["wave"] for row in rollout["devices"]}
    starts = sorted(
        (int(e["detail"]["wave"]), parse_ts(e["ts"]))
        for e in audit
        if e["action"] == "rollout.wave_start"
    )
    ends = [parse_ts(e["ts"]) for e in audit if e["action"] == "rollout.complete"]
    waves = []
    for wave, start in starts:
        members = [by_id[d] for d, w in wave_of.items() if w == wave and d in by_id]
        done = [m.active_at for m in members if m.active_at is not None]
        all_done = len(done) == len(members) and bool(members)
        waves.append(
            WaveResult(
                wave=wave,
                devices=len(members),
                started_s=start - created_at,
                all_active_s=(max(done) - start) if all_done else None,
            )
        )
    active = [r for r in records if r.installed_bundle == rollout["bundle_id"] and r.active_at]
    last_active = max((r.active_at for r in active if r.active_at is not None), default=None)
    return FleetResult(
        devices=devices,
        workers=n_workers,
        connect_s=0.0,
        baseline_s=None,
        baseline_incomplete=0,
        rollout_state=rollout["state"],
        rollout_reason=rollout.get("reason"),
        all_active_s=(last_active - created_at) if last_active and len(active) == devices else None,
        complete_s=(ends[0] - created_at) if ends else None,
        waves=waves,
        install_s=sorted(r.install_seconds for r in active if r.install_seconds is not None),
        active=len(active),
        failed={r.device_id: r.failure for r in records if r.failure},
        cp_states=dict(rollout.get("counts", {})),
        events_published=0,
        events_acked=0,
        events_stored=0,
        offered_per_s=0.0,
        stored_per_s=0.0,
        ingest_s=0.0,
        not_active=sorted(set(by_id) - {r.device_id for r in active})[:20],
    )


# -- output ----------------------------------------------------------------------------


def latency_cell(samples: dict[str, list[float]], name: str) -> str:
    """``p50 / p99 ms (n)`` of one API request's samples, and its failures if any."""
    values = sorted(samples.get(name, []))
    errors = len(samples.get(f"{name} errors", []))
    if not values:
        return NA if not errors else f"{errors} failed"
    cell = f"{percentile(values, 0.5):,.0f} / {percentile(values, 0.99):,.0f} ms ({len(values)})"
    return cell + (f", {errors} failed" if errors else "")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, math.ceil(q * len(values)))
    return values[min(rank, len(values)) - 1]


def seconds(value: float | None) -> str:
    if value is None:
        return NA
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def cpu_cells(used: dict[str, float], wall: float | None) -> str:
    """CPU seconds per component, and their share of the machine over ``wall`` seconds."""
    order = ("control plane", "mosquitto", "simulator")
    text = " / ".join(
        f"{used.get(role, 0.0):.{0 if used.get(role, 0.0) >= 10 else 1}f}" for role in order
    )
    if wall:
        share = sum(used.values()) / (wall * (os.cpu_count() or 1))
        text += f" s ({share:.0%} of {os.cpu_count()} cores)"
    return text


def render_table(results: list[FleetResult], bundle: Bundle, fetch: FetchConfig) -> Table:
    chunk = fetch.chunk_kib * 1024
    table = Table(
        title=f"fleet rollout of {bundle.id} ({bundle.length / 2**20:.2f} MiB, "
        f"{math.ceil(bundle.length / chunk)} chunks of {fetch.chunk_kib} KiB, fetch timeout "
        f"{fetch.timeout_s:g} s), {os.cpu_count()} cores"
    )
    table.add_column("measure")
    for r in results:
        table.add_column(f"{r.devices:,} devices", justify="right")

    def row(label: str, cells: list[str]) -> None:
        table.add_row(label, *cells)

    row("simulator / worker processes", [f"{r.sim} / {r.workers}" for r in results])
    row("connect + known online", [seconds(r.connect_s) for r in results])
    row("[bold]rollout: POST → all active[/]", [seconds(r.all_active_s) for r in results])
    row("rollout: POST → complete (control plane)", [seconds(r.complete_s) for r in results])
    n_waves = max(len(r.waves) for r in results)
    for k in range(n_waves):
        cells = []
        for r in results:
            if k < len(r.waves):
                w = r.waves[k]
                cells.append(f"+{w.devices}: starts {w.started_s:.1f} s, {seconds(w.all_active_s)}")
            else:
                cells.append("")
        row(f"  wave {k + 1}: devices, start, → all active", cells)
    for label, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        row(
            f"install time per device {label}",
            [f"{percentile(r.install_s, q):.2f} s" if r.install_s else NA for r in results],
        )
    row("install time max", [f"{r.install_s[-1]:.2f} s" if r.install_s else NA for r in results])
    row("devices active / failed", [f"{r.active} / {len(r.failed)}" for r in results])
    row(
        "[bold]baseline: broker fan-out of the same bytes[/]",
        [seconds(r.baseline_s) for r in results],
    )
    row(
        "[bold]rollout ÷ baseline[/]",
        [f"{r.ratio:.1f}x" if r.ratio is not None else NA for r in results],
    )
    row("delivery path", [r.delivery for r in results])
    row(
        "[bold]control plane → devices, payload bytes per device[/]",
        [
            f"{r.cp_bytes_per_device:,.0f} ({r.cp_bytes_per_device / r.bundle_length:.2%} of "
            "the bundle)"
            if r.bundle_length
            else NA
            for r in results
        ],
    )
    row(
        "  of which: fetch metadata / fetch targets / blobs / retained metadata (whole rollout)",
        [
            " / ".join(
                f"{r.cp_payload.get(k, 0):,}"
                for k in ("fetch_metadata", "fetch_targets", "blobs", "metadata_retained")
            )
            for r in results
        ],
    )
    row(
        "control plane → broker on the wire, per device (ss)",
        [
            f"{r.cp_wire_bytes / r.devices:,.0f} "
            f"({r.cp_wire_bytes / r.devices / r.bundle_length:.2%})"
            if r.cp_wire_bytes is not None and r.bundle_length
            else NA
            for r in results
        ],
    )
    row(
        "chunks re-asked (fetch timeout) / downloads resumed / blob fall-backs",
        [f"{r.fetch_retries:,} / {r.downloads_resumed:,} / {r.blob_fallbacks:,}" for r in results],
    )
    row("device links dropped and reconnected", [f"{r.reconnects:,}" for r in results])
    row(
        "rollout CPU s: control plane / broker / simulator",
        [cpu_cells(r.rollout_cpu, r.complete_s) for r in results],
    )
    row(
        "control plane CPU ms per device rolled out",
        [f"{1000 * r.rollout_cpu.get('control plane', 0) / max(r.devices, 1):.1f}"
         for r in results],
    )  # fmt: skip
    for name in ("rollout status", "device list"):
        row(
            f"API {name} during the rollout: p50 / p99 (n)",
            [latency_cell(r.api_latency_ms, name) for r in results],
        )
    row(
        "telemetry offered (QoS 1, broker acked)",
        [f"{r.offered_per_s:,.0f} msg/s" for r in results],
    )
    row(
        "[bold]telemetry ingest (rows stored)[/]",
        [f"{r.stored_per_s:,.0f} rows/s" for r in results],
    )
    row(
        "  events stored / published",
        [f"{r.events_stored:,} / {r.events_published:,}" for r in results],
    )
    row(
        "  ingest ÷ offered",
        [f"{r.stored_per_s / r.offered_per_s:.2f}" if r.offered_per_s else NA for r in results],
    )
    row(
        "ingest CPU s: control plane / broker / simulator",
        [cpu_cells(r.telemetry_cpu, r.ingest_s) for r in results],
    )
    return table


# -- entry point -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--devices", default=None, help="comma-separated fleet sizes (default 200,1000)"
    )
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 8 devices, small model, 2 workers"
    )
    parser.add_argument("--events-per-device", type=int, default=None)
    parser.add_argument("--tick", type=float, default=None, help="orchestrator tick, seconds")
    parser.add_argument("--rollout-timeout", type=float, default=600.0)
    parser.add_argument(
        "--fetch-timeout",
        type=float,
        default=FetchConfig().timeout_s,
        help="the agents' fetch.timeout_s: seconds before a chunk is asked again "
        "(default: the agent's own default)",
    )
    parser.add_argument(
        "--delivery",
        choices=("blobs", "fetch"),
        default="blobs",
        help="blobs: targets published once as retained MQTT chunks (default); fetch: every "
        "chunk by request/response from the control plane (the path before blobs)",
    )
    parser.add_argument(
        "--plumbing",
        action="store_true",
        help="simulated devices fetch, verify, unpack and switch but skip the model load "
        "and the smoke test (their own CPU on a real device): measures delivery",
    )
    parser.add_argument(
        "--sim",
        choices=("threads", "async"),
        default="threads",
        help="threads: each device the agent's own parts (paho, offer worker, python-tuf), "
        "up to a few thousand; async: each device an asyncio MQTT 5 session that fetches "
        "and hashes every byte, for 10,000 (bench/fleetsim_async.py)",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="keep everything here")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.devices = args.devices or "8"
        args.workers = 2 if args.workers == 4 else args.workers
    args.sizes = [int(s) for s in (args.devices or "200,1000").split(",")]
    args.events_per_device = args.events_per_device or (5 if args.quick else 10)
    args.tick = args.tick or (0.2 if args.quick else 1.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console.width = 120  # a log or a pipe: keep the table on one line per row
    check_limits(max(args.sizes), console, args.sim)
    root = args.data_dir or Path(tempfile.mkdtemp(prefix="edgefleet-fleet-"))
    root.mkdir(parents=True, exist_ok=True)
    system = System(root, tick_s=args.tick, console=console, blob_delivery=args.delivery == "blobs")
    fetch_config = FetchConfig(timeout_s=args.fetch_timeout, blobs=args.delivery == "blobs")
    results: list[FleetResult] = []
    aborted: list[int] = []
    started = time.monotonic()
    try:
        api = system.start()
        console.print(
            f"mosquitto {system.broker.url}, control plane {api.base_url} up in "
            f"{time.monotonic() - started:.1f} s; data in {root}"
        )
        bundle = build_bundle(system, api, quick=args.quick, console=console)
        trust_root = root / "root.json"
        trust_root.write_bytes(api.trust_root())
        for size in args.sizes:
            try:
                results.append(
                    run_fleet(
                        system,
                        api,
                        bundle,
                        trust_root,
                        devices=size,
                        wanted_workers=args.workers,
                        events_per_device=args.events_per_device,
                        rollout_timeout=args.rollout_timeout,
                        fetch=fetch_config,
                        console=console,
                        skip_model=args.plumbing,
                        sim=args.sim,
                    )
                )
            except (RuntimeError, TimeoutError, ApiError) as e:
                # Report what did finish; a size that could not is named with its reason.
                console.print(f"[bold red]{size} devices did not finish:[/] {e}")
                aborted.append(size)
    finally:
        system.stop()
        if args.data_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    if results:
        if args.plumbing and args.sim == "threads":
            console.print("plumbing mode: devices skipped the model load and the smoke test")
        if args.sim == "async":
            console.print(
                "asyncio simulator: every byte fetched from the broker's retained metadata and "
                "blobs and checked against the signed targets' length and SHA-256; metadata "
                "signatures, unpacking, model load and smoke test skipped (bench/fleetsim_async.py)"
            )
        console.print(render_table(results, bundle, fetch_config))
    for r in results:
        if r.failed:
            console.print(f"{r.devices} devices: failures {dict(list(r.failed.items())[:5])}")
        if r.rollout_state != "complete":
            console.print(f"{r.devices} devices: rollout {r.rollout_state}: {r.rollout_reason}")
    console.print(f"benchmark finished in {time.monotonic() - started:.0f} s")
    if args.json is not None:
        payload = {
            "bundle": {**asdict(bundle), "path": str(bundle.path)},
            "results": [{**asdict(r), "ok": r.ok, "ratio": r.ratio} for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0 if results and not aborted and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
