"""Hot swap under load: a switch to a new model and a roll-back, with no failed request.

A real control plane (in-process, on its own Mosquitto) and a real ``edgefleet-agent``
process serving the digits model. Client threads drive a steady load (``--rate``
requests/s in all, keep-alive connections, one request in flight per thread, no more
threads than the agent's ``max_concurrency``) at ``POST /v2/models/digits/infer``
while the model is switched from version 1 to 2 by a rollout, then rolled back by a
``rollback`` command. It reports, from the same run:

- requests sent and failed (any answer but 200, or no answer: goal 0);
- steady-state p50 / p99 latency (requests more than ``--margin`` seconds away from
  either event) against the worst latency around the switch and around the roll-back;
- which model version answered, before and after each event.

    .venv/bin/python bench/hot_swap.py [--rate 300] [--steady 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tensors import encode_tensor


@dataclass
class Sample:
    """One request: when it was sent (monotonic), how long it took, what answered."""

    sent: float
    latency_s: float
    status: int  # 0: no answer (connection error)
    version: str | None


@dataclass
class SteadyLoad:
    """Paced clients on keep-alive connections against one agent's infer route.

    Each thread sends one request at a time on its own connection, at
    ``rate / threads`` requests/s; a failed connection is reopened (and the failure
    counted). ``samples`` holds every request; read it after ``stop``.
    """

    port: int
    model: str
    body: bytes
    rate: float = 300.0
    threads: int = 3
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, name=f"load-{i}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> list[Sample]:
        self._stop.set()
        for worker in self._workers:
            worker.join(30)
        with self._lock:
            return sorted(self.samples, key=lambda s: s.sent)

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.connect()
        return connection

    def _run(self) -> None:
        interval = self.threads / self.rate
        path = f"/v2/models/{self.model}/infer"
        headers = {"Content-Type": "application/json"}
        connection = self._connect()
        next_at = time.monotonic()
        mine: list[Sample] = []
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at += interval
            sent = time.monotonic()
            status, version = 0, None
            try:
                connection.request("POST", path, body=self.body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                if status == 200:
                    version = str(json.loads(payload)["model_version"])
            except (OSError, http.client.HTTPException):
                connection.close()
                try:
                    connection = self._connect()
                except OSError:
                    time.sleep(0.01)
            mine.append(Sample(sent, time.monotonic() - sent, status, version))
        connection.close()
        with self._lock:
            self.samples.extend(mine)


def infer_body(x: np.ndarray) -> bytes:
    """An OIP infer request for the digits model's ``input``."""
    return json.dumps({"inputs": [encode_tensor("input", x.astype(np.float32))]}).encode()


def failed(samples: list[Sample]) -> list[Sample]:
    return [s for s in samples if s.status != 200]


def summarize(
    samples: list[Sample], events: dict[str, tuple[float, float]], margin: float
) -> dict[str, Any]:
    """Failures, steady p50/p99, and the worst latency around each event (ms).

    ``events`` maps a name to the interval it took (from the command to the new model
    answering); a request sent within ``margin`` of an interval counts as around it,
    every other request as steady state.
    """

    def near(sample: Sample, span: tuple[float, float]) -> bool:
        return span[0] - margin <= sample.sent <= span[1] + margin

    steady = [s.latency_s for s in samples if not any(near(s, sp) for sp in events.values())]
    steady = steady or [0.0]
    cuts = statistics.quantiles(steady, n=100) if len(steady) > 1 else [steady[0]] * 99
    result: dict[str, Any] = {
        "requests": len(samples),
        "failed": len(failed(samples)),
        "steady_requests": len(steady),
        "steady_p50_ms": round(cuts[49] * 1000, 2),
        "steady_p99_ms": round(cuts[98] * 1000, 2),
        "steady_worst_ms": round(max(steady) * 1000, 2),
        "worst_ms": round(max((s.latency_s for s in samples), default=0.0) * 1000, 2),
    }
    for name, span in events.items():
        around = [s for s in samples if near(s, span)]
        result[f"{name}_s"] = round(span[1] - span[0], 3)
        result[f"{name}_requests"] = len(around)
        result[f"{name}_worst_ms"] = round(
            max((s.latency_s for s in around), default=0.0) * 1000, 2
        )
        before = [s.version for s in samples if s.sent < span[0] and s.version]
        after = [s.version for s in samples if s.sent > span[1] + margin and s.version]
        result[f"{name}_versions"] = [before[-1] if before else None, after[0] if after else None]
    return result


def served_version(port: int, model: str, body: bytes) -> str | None:
    """The version answering one infer request now (None on any failure)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", f"/v2/models/{model}/infer", body=body)
        response = connection.getresponse()
        payload = response.read()
        return str(json.loads(payload)["model_version"]) if response.status == 200 else None
    except (OSError, http.client.HTTPException, ValueError, KeyError):
        return None
    finally:
        connection.close()


# -- the run: control plane, broker, one agent process ------------------------------------


@contextmanager
def running_fleet(tmp: Path) -> Iterator[dict[str, Any]]:
    """Broker, control plane with digits v1 and v2 built, one agent serving v1."""
    from fastapi.testclient import TestClient

    from edgefleet.control_plane.app import create_app
    from edgefleet.control_plane.broker.mosquitto import MosquittoBroker
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet_demo.digits import train_digits_model
    from tests.support.harness import (
        build_bundle,
        provision_agent,
        register_model,
        roll_out,
        start_agent,
    )
    from tests.support.polling import wait_until

    os.environ.setdefault("EDGEFLEET_API_AUTH", "false")  # a private, throwaway control plane
    tmp.chmod(0o711)  # the broker drops to its own user: it must reach its directory
    digits = train_digits_model()
    broker = MosquittoBroker(tmp / "broker")
    broker.start()
    agent = None
    try:
        app = create_app(Settings(data_dir=tmp / "cp", broker_url=broker.url))
        with TestClient(app) as api:
            for version in ("1", "2"):
                register_model(api, digits.onnx_bytes, digits.samples, version=version)
            profile, device = "x86-64-gateway-onnx", "dev-hotswap0001"
            old = build_bundle(api, "1", profile)
            new = build_bundle(api, "2", profile)
            config, port = provision_agent(
                tmp,
                api,
                broker=broker.url,
                device_id=device,
                profile=profile,
                extra="[probation]\nseconds = 0\n",
            )
            agent = start_agent(config, tmp / "agent.log")

            def live() -> bool:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).request(
                        "GET", "/v2/health/live"
                    )
                except OSError:
                    return False
                return True

            wait_until(live, "the agent's endpoint")
            wait_until(
                lambda: api.get(f"/api/v1/devices/{device}").status_code == 200,
                "the device's status",
            )
            assert roll_out(api, old["id"], device)["state"] == "complete"
            yield {
                "api": api,
                "app": app,
                "port": port,
                "device": device,
                "old": old,
                "new": new,
                "digits": digits,
                "roll_out": roll_out,
            }
    finally:
        if agent is not None and agent.poll() is None:
            agent.terminate()
            agent.wait(20)
        broker.kill()


LOAD_MS = re.compile(r"model loaded bundle_id=\S+ load_ms=([\d.]+)")
"""The agent's log line for a model loaded beside the serving one (``runtime.load_runtime``).

The issue's bound for a hot swap: no request waits longer than one model call (here
the steady p99 of a whole request) plus the load time; ``<event>_within_bound`` says
whether the worst request around the switch and the roll-back kept it."""


def run(rate: float, steady_s: float, margin: float) -> dict[str, Any]:
    from edgefleet.messages import DeviceCommand
    from tests.support.polling import wait_until

    with tempfile.TemporaryDirectory() as tmp, running_fleet(Path(tmp)) as fleet:
        port, body = fleet["port"], infer_body(fleet["digits"].holdout_x[:1])
        load = SteadyLoad(port, "digits", body, rate=rate)
        load.start()
        time.sleep(steady_s)
        events: dict[str, tuple[float, float]] = {}
        started = time.monotonic()
        rollout = fleet["roll_out"](fleet["api"], fleet["new"]["id"], fleet["device"])
        assert rollout["state"] == "complete", rollout
        wait_until(lambda: served_version(port, "digits", body) == "2", "v2 to answer")
        events["switch"] = (started, time.monotonic())
        time.sleep(steady_s)
        started = time.monotonic()
        fleet["app"].state.link.publish_command(
            fleet["device"], DeviceCommand(command="rollback", bundle_id=fleet["new"]["id"])
        )
        wait_until(lambda: served_version(port, "digits", body) == "1", "v1 to answer again")
        events["rollback"] = (started, time.monotonic())
        time.sleep(steady_s)
        samples = load.stop()
        elapsed = samples[-1].sent - samples[0].sent if samples else 0.0
        result = summarize(samples, events, margin)
        result["rate_per_s"] = round(len(samples) / elapsed, 1) if elapsed else 0.0
        # The agent's own log: how long each new model took to load beside the old.
        loads = LOAD_MS.findall((Path(tmp) / "agent.log").read_text(errors="replace"))
        # The last two loads: v2 before its switch, then v1 before the roll-back.
        timed = [float(x) for x in loads[-2:]]
        for name, load_ms in zip(("switch", "rollback"), timed, strict=len(timed) == 2):
            bound = result["steady_p99_ms"] + load_ms
            result[f"{name}_load_ms"] = round(load_ms, 1)
            result[f"{name}_bound_ms"] = round(bound, 1)
            result[f"{name}_within_bound"] = result[f"{name}_worst_ms"] <= bound
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s in all")
    parser.add_argument("--steady", type=float, default=5.0, help="seconds before/after events")
    parser.add_argument("--margin", type=float, default=1.0, help="seconds around an event")
    args = parser.parse_args(argv)
    result = run(args.rate, args.steady, args.margin)
    print("hot swap bench (digits v1 -> v2 by rollout, back to v1 by rollback command)")
    print(json.dumps(result, indent=2))
    return 0 if result["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
