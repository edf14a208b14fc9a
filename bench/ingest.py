"""Telemetry ingest on PostgreSQL: events stored per second, and the API while it runs.

Everything is real: a private Mosquitto on a free port, the control plane as its own
process(es) (``python -m edgefleet.control_plane serve``: API, fleet link, scheduler)
on a fresh PostgreSQL database, and publishers in processes of their own, each with one
MQTT 5 connection publishing the agent's own ``TelemetryEvent`` (inference windows with
latency histograms) at QoS 1 on ``fleet/<device>/up/telemetry`` for many device ids (the
broker here is anonymous; a device's ACL would tie one connection to one id, which
changes nothing for the control plane). The database is seeded with the devices, a
bundle and a paused rollout holding every device, so each stored event also feeds the
rollout's per-wave aggregates, as during a real rollout.

Runs, each on a fresh database:

1. one replica with ``EDGEFLEET_INGEST_METHOD=values`` (multi-row INSERT ... ON CONFLICT
   DO NOTHING), then ``copy`` (COPY into a staging table + INSERT ... SELECT ON CONFLICT);
   each with every count of ingest worker processes in ``--ingest-processes`` (``2``, the
   control plane's default on PostgreSQL; ``0,1,2`` compares ingest in the API's process
   with one and two workers);
2. two replicas (one PostgreSQL, one shared-subscription group) with the faster method.

The ingest rate is events stored (``SELECT count(*) FROM event``) over the time from the
first publish until the last one is stored; every published event is also published a
second time with the same id (``--redeliver``, a share of them), and the run checks that
each id is stored exactly once. While ingest runs, a probe thread calls ``GET
/rollouts/{id}`` (rollout status, whose gates read the aggregates) and ``GET /devices``
in turn and records their latency; the same probe runs on the idle control plane first.

Then, with ``--gate-rows`` (10,000,000 by default, 0 skips): the events table of a fresh
database is bulk-loaded with COPY, and the gate evaluation of one wave is timed reading
raw events (the query the gates ran before aggregates) and reading the aggregates.

    .venv/bin/python bench/ingest.py                         # the full run
    .venv/bin/python bench/ingest.py --quick                 # small, a minute or so
    .venv/bin/python bench/ingest.py --events 200000 --gate-rows 0

Publishers offer a steady rate (``--rate``, 6,000/s by default, above the 5,000/s goal).
When a replica's telemetry queue is full it sheds messages to the devices' spools (the
link acknowledges them without a receipt; a real agent sends them again, these publishers
do not), so a run where ingest falls behind the offered rate stores fewer events than were
published and says how many were shed; ``stored/s`` is what the replica(s) kept up with.

Exit status 1 when an event was stored twice, or went missing without being shed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.control_plane.core.settings import Settings
from edgefleet.messages import TelemetryEvent

ADMIN_DSN = os.environ.get("EDGEFLEET_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
BUNDLE = "bench-2-x86"
OLD_BUNDLE = "bench-1-x86"
BOUNDS = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
SHARED_GROUP = "cp-bench-ingest"


# -- the database ---------------------------------------------------------------------


def create_database() -> str:
    """A fresh PostgreSQL database; its SQLAlchemy URL."""
    name = f"edgefleet_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base = ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def plain_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def seed(url: str, data_dir: Path, devices: list[str]) -> int:
    """Migrate, then add the devices, two bundles and a paused rollout of every device.

    Half the devices are in wave 0 (on the new bundle), half in wave 1 (still on the old
    one), so the gates have a candidate and a baseline. Returns the rollout id.
    """
    engine = make_engine(Settings(data_dir=data_dir, database_url=url))
    create_db_and_tables(engine)
    engine.dispose()
    now = datetime.now(UTC)
    with psycopg.connect(plain_dsn(url)) as db, db.cursor() as cursor:
        for release, bundle in ((1, OLD_BUNDLE), (2, BUNDLE)):
            cursor.execute(
                "INSERT INTO bundle (id, model, model_version, profile, release, target, "
                "sha256, length, path, manifest, created_at) VALUES "
                "(%s, 'bench', %s, 'x86', %s, %s, %s, 1, %s, '{}', %s)",
                (bundle, str(release), release, f"{bundle}.tar", "a" * 64, bundle, now),
            )
        with cursor.copy("COPY device (id, online, stale, labels, last_seen) FROM STDIN") as copy:
            for device in devices:
                copy.write_row((device, True, False, "{}", now))
        gates = {"max_error_rate": 0.5, "max_p95_latency_ratio": 10.0, "min_inferences": 1}
        cursor.execute(
            "INSERT INTO rollout (bundle_id, state, strategy, mode, selector, waves, "
            "wave_sizes, soak_seconds, gates, current_wave, phase, wave_started_at, "
            "install_timeout_s, wave_timeout_s, promoted, wave_results, revision, "
            "created_at, updated_at) VALUES (%s, 'paused', 'canary', 'manual', '{}', '[]', "
            "%s, 3600, %s, 0, 'soaking', %s, 600, 3600, false, '[]', 0, %s, %s) RETURNING id",
            (
                BUNDLE,
                json.dumps([len(devices) // 2, len(devices) - len(devices) // 2]),
                json.dumps(gates),
                now - timedelta(minutes=1),
                now,
                now,
            ),
        )
        row = cursor.fetchone()
        assert row is not None
        rollout_id = int(row[0])
        with cursor.copy(
            "COPY rolloutdevice (rollout_id, device_id, wave, state, updated_at) FROM STDIN"
        ) as copy:
            for i, device in enumerate(devices):
                wave = 0 if i < len(devices) // 2 else 1
                copy.write_row(
                    (rollout_id, device, wave, "active" if wave == 0 else "pending", now)
                )
        cursor.execute("UPDATE rollout SET soak_started_at = %s WHERE id = %s", (now, rollout_id))
    return rollout_id


def count_events(url: str) -> int:
    with psycopg.connect(plain_dsn(url)) as db:
        row = db.execute("SELECT count(*) FROM event").fetchone()
        return int(row[0]) if row else 0


def duplicates(url: str) -> int:
    with psycopg.connect(plain_dsn(url)) as db:
        row = db.execute("SELECT count(*) - count(DISTINCT event_id) FROM event").fetchone()
        return int(row[0]) if row else 0


# -- control-plane replicas -------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (from /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its running children (the ingest worker processes)."""
    total = cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(tree_cpu_seconds(int(child)) for child in children)
    return total


@dataclass
class Replica:
    process: subprocess.Popen[bytes]
    base: str
    data_dir: Path
    log: Path

    def token(self) -> str | None:
        path = self.data_dir / "admin.token"
        return path.read_text().strip() if path.exists() else None


def start_replica(
    root: Path, n: int, broker: str, url: str, method: str, processes: int
) -> Replica:
    port = free_port()
    data_dir = root / f"cp-{n}"
    log = root / f"cp-{n}.log"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "EDGEFLEET_INGEST_METHOD": method,
        "EDGEFLEET_MQTT_SHARED_GROUP": SHARED_GROUP,
        "EDGEFLEET_ROLLOUT_TICK_S": "1",
        "EDGEFLEET_INGEST_PROCESSES": str(processes),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.control_plane", "serve", "--host", "127.0.0.1",
             "--port", str(port), "--broker", broker, "--data-dir", str(data_dir),
             "--database-url", url, "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    replica = Replica(process, f"http://127.0.0.1:{port}", data_dir, log)
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"replica {n} exited:\n{log.read_text()[-3000:]}")
        try:
            health = httpx.get(f"{replica.base}/api/v1/health", timeout=2).json()
            if health.get("broker_connected") is True:
                break
        except (httpx.HTTPError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"replica {n} not healthy in 90 s")
        time.sleep(0.3)
    return replica


def shed_count(replicas: list[Replica]) -> int:
    """Telemetry the replicas shed on a full queue (the last count each one logged)."""
    total = 0
    for replica in replicas:
        lines = replica.log.read_text(errors="replace").splitlines()
        counts = [int(line.rsplit("shed=", 1)[1]) for line in lines if "shed=" in line]
        total += max(counts, default=0)
    return total


def stop_replica(replica: Replica) -> None:
    if replica.process.poll() is None:
        replica.process.terminate()
        try:
            replica.process.wait(20)
        except subprocess.TimeoutExpired:
            replica.process.kill()
            replica.process.wait()


# -- publishers (processes of their own) ------------------------------------------------


def make_payloads(devices: list[str], count: int, seed_n: int) -> list[tuple[str, bytes]]:
    """``count`` inference windows spread over ``devices``: (topic, payload)."""
    rng = random.Random(seed_n)
    half = len(devices) // 2
    out = []
    for i in range(count):
        d = rng.randrange(len(devices))
        counts = [rng.randrange(50) for _ in range(len(BOUNDS) + 1)]
        event = TelemetryEvent(
            kind="inference",
            priority=2,
            bundle_id=BUNDLE if d < half else OLD_BUNDLE,
            release=2 if d < half else 1,
            data={
                "window_s": 10,
                "count": sum(counts),
                "errors": rng.randrange(2),
                "latency_ms": {"p50": 3.0, "p95": 12.0, "p99": 30.0},
                "histogram": {"bounds_ms": BOUNDS, "counts": counts},
                "seq": i,
            },
        )
        out.append((f"fleet/{devices[d]}/up/telemetry", event.to_bytes()))
    return out


def publisher(
    port: int,
    payloads: list[tuple[str, bytes]],
    rate: float,
    ready: Any,
    go: MpEvent,
    result: Any,
) -> None:
    """Publish ``payloads`` at QoS 1 at ``rate`` events/s (a fleet's steady telemetry, not
    one unbounded burst); send the timings once the broker acknowledged them all."""
    acked = threading.Semaphore(0)
    client = paho.Client(
        callback_api_version=paho.CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_publish = lambda *_args: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    ready.put(True)
    go.wait()
    start = time.time()
    for n, (topic, payload) in enumerate(payloads):
        ahead = start + n / rate - time.time()
        if ahead > 0:
            time.sleep(ahead)
        client.publish(topic, payload, qos=1)
    got = 0
    while got < len(payloads) and acked.acquire(timeout=120):
        got += 1
    end = time.time()
    client.loop_stop()
    client.disconnect()
    result.put({"start": start, "end": end, "published": got})


# -- the API probe ------------------------------------------------------------------------


@dataclass
class Latencies:
    rollout: list[float] = field(default_factory=list)
    devices: list[float] = field(default_factory=list)
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        def pct(values: list[float], q: float) -> float | None:
            if not values:
                return None
            ordered = sorted(values)
            return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

        return {
            "rollout_status_ms": {"p50": pct(self.rollout, 0.5), "p99": pct(self.rollout, 0.99),
                                  "n": len(self.rollout)},
            "device_list_ms": {"p50": pct(self.devices, 0.5), "p99": pct(self.devices, 0.99),
                               "n": len(self.devices)},
            "errors": self.errors,
        }  # fmt: skip


def probe_api(
    replica: Replica, rollout_id: int, stop: threading.Event, interval: float
) -> Latencies:
    """Call rollout status and device list every ``interval`` s until ``stop`` (an operator
    console polling), and record their latencies."""
    token = replica.token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies = Latencies()
    with httpx.Client(base_url=f"{replica.base}/api/v1", headers=headers, timeout=60) as http:
        while not stop.is_set():
            for path, into in ((f"/rollouts/{rollout_id}", latencies.rollout),
                               ("/devices", latencies.devices)):  # fmt: skip
                began = time.perf_counter()
                try:
                    http.get(path).raise_for_status()
                    into.append(time.perf_counter() - began)
                except httpx.HTTPError:
                    latencies.errors += 1
            stop.wait(interval)
    return latencies


def probe_for(replica: Replica, rollout_id: int, seconds: float, interval: float) -> Latencies:
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        return probe_api(replica, rollout_id, stop, interval)
    finally:
        timer.cancel()


# -- one run ---------------------------------------------------------------------------------


def run_ingest(
    args: argparse.Namespace, *, method: str, replicas: int, processes: int
) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="edgefleet-ingest-"))
    os.chmod(root, 0o711)  # the broker may run as its own user: it must reach its dir
    url = create_database()
    devices = [f"dev-{i:012x}" for i in range(args.devices)]
    rollout_id = seed(url, root / "seed", devices)
    broker = MosquittoBroker(root / "broker", persistence=False)
    broker.start()
    started: list[Replica] = []
    try:
        for n in range(replicas):
            started.append(start_replica(root, n, broker.url, url, method, processes))
        time.sleep(2)  # every replica's subscription acknowledged before the first event
        idle = probe_for(started[0], rollout_id, args.idle_probe_s, args.probe_interval)
        per = args.events // args.publishers
        shares = [make_payloads(devices, per, seed_n=n) for n in range(args.publishers)]
        redelivered = int(per * args.redeliver)
        shares = [share + share[:redelivered] for share in shares]  # same ids again
        unique = per * args.publishers
        ctx = multiprocessing.get_context("spawn")
        ready, result, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = [
            ctx.Process(
                target=publisher,
                args=(broker.port, share, args.rate / args.publishers, ready, go, result),
            )
            for share in shares
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=60)
        cpu_before = {r.process.pid: tree_cpu_seconds(r.process.pid) for r in started}
        stop = threading.Event()
        probe: dict[str, Latencies] = {}
        prober = threading.Thread(
            target=lambda: probe.setdefault(
                "busy", probe_api(started[0], rollout_id, stop, args.probe_interval)
            )
        )
        go.set()
        prober.start()
        deadline = time.monotonic() + args.timeout
        stored, grew_at, done = 0, time.monotonic(), time.time()
        while time.monotonic() < deadline and time.monotonic() - grew_at < args.stall_s:
            now_stored = count_events(url)
            if now_stored > stored:
                stored, grew_at, done = now_stored, time.monotonic(), time.time()
            if stored >= unique:
                break
            time.sleep(0.2)
        stop.set()
        prober.join()
        timings = [result.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        first = min(t["start"] for t in timings)
        published_s = max(t["end"] for t in timings) - first
        elapsed = done - first
        cpu = {f"cp-{i}": round(tree_cpu_seconds(r.process.pid) - cpu_before[r.process.pid], 1)
               for i, r in enumerate(started)}  # fmt: skip
        dup = duplicates(url)
        run_shed = shed_count(started)
        return {
            "method": method,
            "ingest_processes": processes,
            "replicas": replicas,
            "events": unique,
            "published_with_redeliveries": sum(t["published"] for t in timings),
            "stored": stored,
            "duplicates": dup,
            "seconds": round(elapsed, 2),
            "stored_per_s": round(stored / elapsed),
            "shed": run_shed,
            "offered_per_s": round(sum(t["published"] for t in timings) / published_s),
            "cpu_s": cpu,
            "api_idle": idle.summary(),
            "api_busy": probe["busy"].summary(),
            "missing": unique - stored,  # shed to the devices' spools, which would resend
            # Exactly once: nothing stored twice; nothing missing but what was shed.
            "ok": dup == 0 and (stored == unique or run_shed > 0),
        }
    finally:
        for replica in started:
            stop_replica(replica)
        broker.stop()
        drop_database(url)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


# -- the gate query at millions of rows --------------------------------------------------


def run_gates(args: argparse.Namespace) -> dict[str, Any]:
    """Load ``--gate-rows`` events with COPY; time the gate query on raw events and on
    the aggregates, in the same database."""
    from sqlmodel import Session

    from edgefleet.control_plane.core.tables import Rollout
    from edgefleet.control_plane.services.event_aggregates import read_wave_telemetry
    from edgefleet.control_plane.services.rollouts.waves import wave_verdict

    root = Path(tempfile.mkdtemp(prefix="edgefleet-gates-"))
    url = create_database()
    devices = [f"dev-{i:012x}" for i in range(args.devices)]
    rollout_id = seed(url, root / "seed", devices)
    rows = args.gate_rows
    now = datetime.now(UTC)
    since = now - timedelta(hours=args.soak_hours)
    try:
        began = time.perf_counter()
        with psycopg.connect(plain_dsn(url)) as db:
            copy_events(db, rows, devices, now)  # ten days of windows up to now
            db.execute("ANALYZE event")
        load_s = time.perf_counter() - began
        engine = make_engine(Settings(data_dir=root, database_url=url))
        with engine.connect() as c:
            recent = c.exec_driver_sql(
                "SELECT count(*) FROM event WHERE ts >= %(since)s", {"since": since}
            ).scalar()
        # Aggregates for the same rows, as ingest would have kept them.
        began = time.perf_counter()
        with psycopg.connect(plain_dsn(url)) as db:
            db.execute(
                "INSERT INTO event_aggregate SELECT %(rollout)s, rd.wave, e.bundle_id, e.kind, "
                "date_trunc('minute', e.ts), count(*), sum(100), sum((e.data->>'errors')::float), "
                "sum(100 * 12), 0, 0, 10 FROM event e JOIN rolloutdevice rd ON "
                "rd.device_id = e.device_id AND rd.rollout_id = %(rollout)s "
                "GROUP BY rd.wave, e.bundle_id, e.kind, date_trunc('minute', e.ts)",
                {"rollout": rollout_id},
            )
            db.execute(
                "INSERT INTO event_histogram_bucket SELECT a.rollout_id, a.wave, a.bundle_id, "
                "a.kind, a.minute, b.bound, a.events * b.n FROM event_aggregate a CROSS JOIN "
                "(VALUES (1.0, 10), (5.0, 60), (10.0, 20), (50.0, 10)) AS b (bound, n)"
            )
            aggregate_rows = db.execute("SELECT count(*) FROM event_aggregate").fetchone()
        backfill_s = time.perf_counter() - began
        timings: dict[str, list[float]] = {"raw": [], "aggregates": [], "verdict": []}
        with Session(engine) as session:
            rollout = session.get(Rollout, rollout_id)
            assert rollout is not None
            rollout.wave_started_at = since
            for _ in range(args.gate_repeats):
                began = time.perf_counter()
                raw_gate_scan(session, rollout, wave=0, since=since)
                timings["raw"].append(time.perf_counter() - began)
                began = time.perf_counter()
                read_wave_telemetry(session=session, rollout=rollout, wave=0, since=since)
                timings["aggregates"].append(time.perf_counter() - began)
                began = time.perf_counter()
                verdict = wave_verdict(session, rollout, 0)
                timings["verdict"].append(time.perf_counter() - began)
        engine.dispose()
        return {
            "rows": rows,
            "rows_since_wave_start": recent,
            "load_s": round(load_s, 1),
            "load_rows_per_s": round(rows / load_s),
            "aggregate_rows": aggregate_rows[0] if aggregate_rows else None,
            "aggregate_backfill_s": round(backfill_s, 1),
            "gate_raw_ms": round(statistics.median(timings["raw"]) * 1000, 1),
            "gate_aggregates_ms": round(statistics.median(timings["aggregates"]) * 1000, 1),
            "wave_verdict_ms": round(statistics.median(timings["verdict"]) * 1000, 1),
            "verdict": [f"{v.name}={v.value}" for v in verdict.values],
        }
    finally:
        drop_database(url)
        shutil.rmtree(root, ignore_errors=True)


def copy_events(db: psycopg.Connection[Any], rows: int, devices: list[str], now: datetime) -> None:
    """COPY ``rows`` inference windows spread over ten days up to ``now``.

    Lines are formatted here in blocks (COPY's text format) rather than row by row
    through ``write_row``: the load is then bound by PostgreSQL, not by this loop.
    """
    half = len(devices) // 2
    histogram = {"bounds_ms": [1, 5, 10, 50], "counts": [10, 60, 20, 10, 0]}
    datas = [
        json.dumps({"window_s": 10, "count": 100, "errors": e, "latency_ms": {"p95": 12},
                    "histogram": histogram}).replace("\\", "\\\\")
        for e in range(3)
    ]  # fmt: skip
    bundles = [BUNDLE if d < half else OLD_BUNDLE for d in range(len(devices))]
    received = now.isoformat()
    start = now.timestamp()
    span = 10 * 86400
    columns = "event_id, device_id, kind, priority, bundle_id, release, ts, received_at, data"
    with db.cursor() as cursor, cursor.copy(f"COPY event ({columns}) FROM STDIN") as copy:
        for block in range(0, rows, 50_000):
            lines = []
            for g in range(block, min(rows, block + 50_000)):
                d = g % len(devices)
                ts = datetime.fromtimestamp(start - span * g / rows, UTC).isoformat()
                lines.append(
                    f"{g:032x}\t{devices[d]}\tinference\t2\t{bundles[d]}\t1\t{ts}\t"
                    f"{received}\t{datas[g % 3]}\n"
                )
            copy.write("".join(lines))


def raw_gate_scan(session: Any, rollout: Any, *, wave: int, since: datetime) -> int:
    """The gates' query before aggregates: every inference/shadow event of the rollout's
    devices since the wave began, decoded in Python (what ``wave_verdict`` did)."""
    from sqlmodel import col, select

    from edgefleet.control_plane.core.tables import Event, RolloutDevice

    everyone = session.exec(
        select(RolloutDevice.device_id).where(RolloutDevice.rollout_id == rollout.id)
    ).all()
    events = session.exec(
        select(Event.device_id, Event.kind, Event.bundle_id, Event.data).where(
            col(Event.kind).in_(["inference", "shadow"]),
            col(Event.device_id).in_(everyone),
            col(Event.ts) >= since,
        )
    ).all()
    return len([dict(raw or {}) for _d, _k, _b, raw in events])


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="unique events per run")
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--redeliver", type=float, default=0.05,
                        help="share of events published twice with the same id")  # fmt: skip
    parser.add_argument("--methods", default="values,copy")
    parser.add_argument("--ingest-processes", default="2",
                        type=lambda text: [int(n) for n in text.split(",") if n],
                        help="ingest worker processes per replica, each count a run "
                        "(0: ingest in the API's process, as before)")  # fmt: skip
    parser.add_argument("--replicas", default="1,2", help="replica counts to run")
    parser.add_argument("--idle-probe-s", type=float, default=10.0)
    parser.add_argument("--probe-interval", type=float, default=0.5,
                        help="seconds between the API probe's rounds (2 calls each)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=6000.0,
                        help="events/s offered by all publishers together")  # fmt: skip
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--stall-s", type=float, default=20.0,
                        help="stop waiting when nothing was stored for this long")  # fmt: skip
    parser.add_argument("--gate-rows", type=int, default=10_000_000)
    parser.add_argument("--gate-repeats", type=int, default=5)
    parser.add_argument("--soak-hours", type=float, default=24.0,
                        help="how long the judged wave has soaked")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="20,000 events, 200,000 gate rows")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.gate_rows, args.idle_probe_s = 20_000, 200_000, 2.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Any] = {"runs": []}
    methods = [m for m in args.methods.split(",") if m]
    counts = sorted({int(n) for n in args.replicas.split(",") if n})
    if 1 in counts:
        for method in methods:
            for processes in args.ingest_processes:
                run = run_ingest(args, method=method, replicas=1, processes=processes)
                print(json.dumps(run), flush=True)
                results["runs"].append(run)
    singles = [r for r in results["runs"] if r["replicas"] == 1]
    best = max(singles, key=lambda r: r["stored_per_s"])["method"] if singles else "values"
    results["faster_method"] = best
    for n in (c for c in counts if c > 1):
        run = run_ingest(args, method=best, replicas=n, processes=args.ingest_processes[-1])
        print(json.dumps(run), flush=True)
        results["runs"].append(run)
    if args.gate_rows:
        results["gates"] = run_gates(args)
        print(json.dumps(results["gates"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0 if all(r["ok"] for r in results["runs"]) else 1


def print_table(results: dict[str, Any]) -> None:
    print("\nmethod  procs  replicas  events  stored/s  offered/s  dup  API busy p50/p99 ms "
          "(rollout | devices)  API idle p50/p99 ms  CPU s")  # fmt: skip
    for r in results["runs"]:
        busy, idle = r["api_busy"], r["api_idle"]
        print(
            f"{r['method']:<7} {r['ingest_processes']:>5} {r['replicas']:>8} {r['events']:>7,} "
            f"{r['stored_per_s']:>9,} "
            f"{r['offered_per_s']:>10,} {r['duplicates']:>4}  "
            f"{busy['rollout_status_ms']['p50']}/{busy['rollout_status_ms']['p99']} | "
            f"{busy['device_list_ms']['p50']}/{busy['device_list_ms']['p99']}   "
            f"{idle['rollout_status_ms']['p50']}/{idle['rollout_status_ms']['p99']} | "
            f"{idle['device_list_ms']['p50']}/{idle['device_list_ms']['p99']}  {r['cpu_s']}"
        )
    print(f"faster method: {results.get('faster_method')}")
    if "gates" in results:
        g = results["gates"]
        print(
            f"gates at {g['rows']:,} events ({g['rows_since_wave_start']:,} since the wave "
            f"began): telemetry read from raw events {g['gate_raw_ms']} ms, from aggregates "
            f"{g['gate_aggregates_ms']} ms (whole wave verdict {g['wave_verdict_ms']} ms); "
            f"COPY load {g['load_rows_per_s']:,} rows/s"
        )


if __name__ == "__main__":
    sys.exit(main())
