"""Telemetry ingest in a process of its own, supervised by the control plane.

Why a process: at a few thousand events a second, decoding, aggregating and storing
telemetry is most of a replica's Python work, and in the API's process it held the GIL
(and paid for full garbage collections over the API's large heap) while operators
waited. Here it runs on a lean heap with its own MQTT session, as one more member of the
replica group's shared subscription to ``fleet/+/up/telemetry``; the broker spreads
telemetry over the members, and the API's process takes no share of it.

Two halves:

* ``IngestProcess`` (in the control plane): the body of a supervised thread
  (``cp-ingest-<n>``) that starts ``python -m edgefleet.control_plane.broker.ingest_worker``,
  hands it its settings on stdin, reads its status lines on stdout and returns (a death,
  so the ``Supervisor`` starts it again, logs it and shows it in ``/api/v1/health``)
  when the child exits for any reason, ``kill -9`` included.
* ``main`` (in the child): ``TelemetryIngest`` on its own ``MqttLink``; it prints a
  status line (JSON: subscribed, stored, shed, its workers) every ``STATUS_EVERY_S`` and
  exits when told to (SIGTERM) or when its parent is gone (stdin closed).

Exactly once across a restart: the child acknowledges a message to the broker only
after its burst is committed and receipted; what it dies holding is not receipted, so
the devices send it again, and ``ON CONFLICT DO NOTHING`` skips whatever of it the
database already has.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgefleet.control_plane.core.settings import Settings
from edgefleet.supervisor import WorkerState

logger = logging.getLogger(__name__)

STATUS_EVERY_S = 1.0
GC_THRESHOLDS = (100_000, 50, 100)
"""The collector's thresholds in the worker. With Python's default (700 allocations)
a queued message was walked by a collection many times before its burst was stored:
collections took about 14 % of the worker's samples in py-spy at 4,000 events/s."""
STOP_TIMEOUT_S = 30.0
_FORWARDED = (
    "data_dir",
    "broker_url",
    "database_url",
    "environment",
    "api_auth",
    "mqtt_session_expiry_s",
    "broker_ca_file",
    "broker_cert_file",
    "broker_key_file",
    "ingest_method",
)


class IngestProcessError(RuntimeError):
    """The ingest worker process ended without being asked to."""


@dataclass
class IngestStatus:
    """What the child last reported."""

    subscribed: bool = False
    stored: int = 0
    shed: int = 0
    workers: list[WorkerState] = field(default_factory=list)


def child_settings(settings: Settings) -> dict[str, Any]:
    """The settings a worker needs, as JSON-ready values (secrets included: stdin only)."""
    values = settings.model_dump(mode="json", include=set(_FORWARDED))
    if settings.key_passphrase is not None:
        values["key_passphrase"] = settings.key_passphrase.get_secret_value()
    return values


class IngestProcess:
    """One ingest worker process, run from a supervised thread of the fleet link."""

    def __init__(self, *, settings: Settings, client_id: str, shared_group: str) -> None:
        self._config = json.dumps(
            {
                "settings": child_settings(settings),
                "client_id": client_id,
                "shared_group": shared_group,
                "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()),
            }
        )
        self.client_id = client_id
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self.status = IngestStatus()
        self.subscribed = threading.Event()

    @property
    def pid(self) -> int | None:
        with self._lock:
            return self._process.pid if self._process is not None else None

    def run(self) -> None:
        """Start the child and follow it until it exits (the supervised thread's body).

        Raises:
            IngestProcessError: The child exited while not stopping (the supervisor
                restarts it).
        """
        self.subscribed.clear()
        self.status = IngestStatus()
        with self._lock:
            if self._stopping:
                return
            process = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.control_plane.broker.ingest_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            self._process = process
        assert process.stdin is not None and process.stdout is not None
        logger.info("ingest process started client_id=%s pid=%d", self.client_id, process.pid)
        try:
            process.stdin.write(self._config.encode() + b"\n")
            process.stdin.flush()  # stdin stays open: its end tells the child we are gone
        except OSError:
            pass  # it died at once: its exit status says why
        for line in process.stdout:
            self._read_status(line)
        code = process.wait()
        self.subscribed.clear()
        if self._stopping:
            return
        raise IngestProcessError(f"ingest process pid={process.pid} exited with status {code}")

    def _read_status(self, line: bytes) -> None:
        try:
            raw = json.loads(line)
            workers = [
                WorkerState(
                    name=f"{self.client_id}/{w['name']}",
                    running=bool(w["running"]),
                    restarts=int(w["restarts"]),
                    last_death_at=datetime.fromisoformat(w["last_death_at"])
                    if w["last_death_at"]
                    else None,
                    last_error=w["last_error"],
                )
                for w in raw["workers"]
            ]
            self.status = IngestStatus(
                subscribed=bool(raw["subscribed"]),
                stored=int(raw["stored"]),
                shed=int(raw["shed"]),
                workers=workers,
            )
        except (ValueError, KeyError, TypeError, RecursionError) as e:
            logger.warning("ingest status line not understood error=%s", type(e).__name__)
            return
        if self.status.subscribed:
            self.subscribed.set()
        else:
            self.subscribed.clear()

    def stop(self) -> None:
        """Ask the child to finish what it holds and exit; kill it past the deadline."""
        with self._lock:
            self._stopping = True
            process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("ingest process did not stop in time, killed pid=%d", process.pid)
            process.kill()
            process.wait()


# -- the child ----------------------------------------------------------------------------


def main() -> int:
    """The ingest worker process: read the config line, ingest until told to stop."""
    config = json.loads(sys.stdin.readline())
    logging.basicConfig(
        level=config.get("log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    from edgefleet.control_plane.broker.telemetry import TelemetryIngest
    from edgefleet.control_plane.core.db import make_engine
    from edgefleet.mqtt import BrokerAddress, MqttLink
    from edgefleet.supervisor import Supervisor

    settings = Settings.model_validate(config["settings"])
    # Everything imported so far lives as long as the process: keep it out of the
    # collector's way, so a full collection walks only what ingest allocates.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    engine = make_engine(settings)
    link = MqttLink(
        client_id=config["client_id"],
        broker=BrokerAddress.parse(settings.broker_url),
        clean_start=False,
        session_expiry=settings.mqtt_session_expiry_s,
        tls=settings.mqtt_tls,
    )
    ingest = TelemetryIngest(engine=engine, link=link, method=settings.ingest_method)
    ingest.subscribe(config["shared_group"])
    supervisor = Supervisor()
    supervisor.start("cp-telemetry", ingest.run)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def watch_parent() -> None:
        sys.stdin.read()  # returns when the parent closes the pipe or dies
        stop.set()

    threading.Thread(target=watch_parent, name="parent-watch", daemon=True).start()
    link.start()
    logger.info("ingest process running client_id=%s", config["client_id"])
    while not stop.wait(STATUS_EVERY_S):
        _print_status(link, ingest, supervisor)
    # What is queued is stored, receipted and acknowledged before the link goes; what
    # arrives meanwhile stays unreceipted, and its devices send it again.
    supervisor.stop()
    ingest.stop()
    supervisor.join(STOP_TIMEOUT_S)
    link.stop()
    engine.dispose()
    logger.info("ingest process stopped stored=%d shed=%d", ingest.stored, ingest.shed)
    return 0


def _print_status(link: Any, ingest: Any, supervisor: Any) -> None:
    status = {
        "subscribed": link.wait_subscribed(0),
        "stored": ingest.stored,
        "shed": ingest.shed,
        "workers": [
            {
                "name": w.name,
                "running": w.running,
                "restarts": w.restarts,
                "last_death_at": w.last_death_at.isoformat() if w.last_death_at else None,
                "last_error": w.last_error,
            }
            for w in supervisor.workers()
        ],
    }
    try:
        sys.stdout.write(json.dumps(status) + "\n")
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the parent is gone: stdin's end stops us
        pass


if __name__ == "__main__":
    sys.exit(main())
