"""``edgefleet demo``: the whole spine on one machine, from nothing, end to end.

Starts a private Mosquitto, the control plane and N device agents as separate OS
processes, spread over two device classes this machine can run (on x86-64: the
onnxruntime gateway and the LiteRT industrial PC); trains the digits model,
registers it, builds one signed bundle per class through the converter gates, rolls
each out to its class, checks every device answers held-out digits through its
local Open Inference Protocol endpoint, prints a summary and stops everything.

Why this module stays over 400 lines: it is the demo's script, one ``Demo`` run from
start to finish (broker, control plane, agents, model, bundles, rollouts, checks,
summary), read top to bottom as the walkthrough of the whole system; it is outside
the product packages.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from edgefleet.control_plane.broker.mosquitto import MosquittoBroker, let_broker_enter
from edgefleet.control_plane.client import ApiClient
from edgefleet.control_plane.core.netutil import free_port
from edgefleet.control_plane.core.processes import ProcessGroup
from edgefleet.mqtt import BrokerAddress
from edgefleet.tensors import decode_tensor, encode_tensor
from edgefleet_demo.digits import train_digits_model
from edgefleet_demo.drift_phase import DriftDemoResult, run_drift_phase, write_hooks_file

MODEL_NAME = "digits"
# Two device classes per CPU architecture, so that the demo's bundles can pass the
# agents' hardware check on the machine it runs on: one onnxruntime, one TFLite.
DEMO_PROFILES = {
    "x86_64": ["x86-64-gateway-onnx", "x86-64-ipc-litert-int8"],
    "aarch64": ["jetson-orin-onnx-fp16", "rpi-arm64-litert-int8"],
}


def default_demo_profiles() -> list[str]:
    machine = platform.machine()
    if machine not in DEMO_PROFILES:
        raise RuntimeError(f"the demo has no device classes for a {machine} machine")
    return list(DEMO_PROFILES[machine])


@dataclass
class DeviceResult:
    device_id: str
    profile: str
    state: str
    bundle_id: str | None
    release: int | None
    install_seconds: float | None
    accuracy: float | None
    reason: str | None = None


@dataclass
class DemoResult:
    bundles: dict[str, dict[str, Any]]  # profile -> id, release, candidate
    model_version: str
    rollout_state: str  # complete only when every profile's rollout completed
    devices: list[DeviceResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    drift: DriftDemoResult | None = None

    @property
    def ok(self) -> bool:
        spine = self.rollout_state == "complete" and all(
            d.state == "active" and (d.accuracy or 0.0) >= 0.9 for d in self.devices
        )
        return spine and (self.drift is None or self.drift.ok)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.2) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def agent_config(
    *, device_id: str, profile: str, broker: str, data_dir: Path, trust_root: Path, port: int
) -> str:
    """The TOML configuration of one demo agent."""
    return (
        f'device_id = "{device_id}"\n'
        f'profile = "{profile}"\n'
        f'broker = "{broker}"\n'
        f'data_dir = "{data_dir}"\n'
        f'trust_root = "{trust_root}"\n'
        "\n[inference]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        "max_concurrency = 4\n"
    )


def write_agent_config(
    path: Path, *, device_id: str, profile: str, broker: str, data_dir: Path, trust_root: Path,
    extra: str = "",
) -> int:  # fmt: skip
    """Write one agent's ``agent.toml`` (``extra`` TOML appended) with its endpoint on a
    free port; returns that port."""
    port = free_port()
    path.write_text(
        agent_config(
            device_id=device_id,
            profile=profile,
            broker=broker,
            data_dir=data_dir,
            trust_root=trust_root,
            port=port,
        )
        + extra
    )
    return port


def infer_accuracy(port: int, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of the model behind an agent's local endpoint on ``x``/``y``."""
    body = {"id": "demo", "inputs": [encode_tensor("input", x.astype(np.float32))]}
    response = httpx.post(
        f"http://127.0.0.1:{port}/v2/models/{MODEL_NAME}/infer", json=body, timeout=30
    )
    response.raise_for_status()
    outputs = dict(decode_tensor(o) for o in response.json()["outputs"])
    return float(np.mean(outputs["label"] == y))


class Demo:
    def __init__(
        self,
        *,
        agents: int,
        console: Console,
        broker_url: str | None = None,
        data_dir: Path | None = None,
        timeout: float = 120.0,
        drift: bool = False,
        profiles: list[str] | None = None,
    ) -> None:
        self.n_agents = agents
        self.with_drift = drift
        # The drift loop retrains per cohort; one class keeps its quorum simple.
        self.profiles = (profiles or default_demo_profiles())[: 1 if drift else None]
        self.console = console
        self.broker_url = broker_url
        self.timeout = timeout
        self._owns_data_dir = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="edgefleet-demo-"))
        self.processes = ProcessGroup()
        self.broker: MosquittoBroker | None = None

    def step(self, text: str) -> None:
        self.console.print(Text.assemble(("»", "bold cyan"), " ", text))

    def run(self) -> DemoResult:
        try:
            return self._run()
        finally:
            self.step("stopping agents, control plane and broker")
            self.processes.stop_all()
            if self.broker is not None:
                self.broker.stop()
            if self._owns_data_dir:
                shutil.rmtree(self.data_dir, ignore_errors=True)

    def _run(self) -> DemoResult:
        timings: dict[str, float] = {}
        started = time.monotonic()
        self.step(f"data directory {self.data_dir}")

        if self.broker_url is None:
            let_broker_enter(self.data_dir)  # started by root, it runs as `mosquitto`
            self.broker = MosquittoBroker(self.data_dir / "broker")
            self.broker.start()
            broker_url = self.broker.url
            self.step(f"mosquitto listening on {broker_url}")
        else:
            broker_url = BrokerAddress.parse(self.broker_url).url()
            self.step(f"using broker {broker_url}")

        api_port = free_port()
        hooks_file = self.data_dir / "retraining-hooks.toml"
        write_hooks_file(hooks_file)
        self.processes.start_module(
            "control plane",
            "edgefleet.control_plane",
            [
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
                "--broker",
                broker_url,
                "--data-dir",
                str(self.data_dir / "control-plane"),
                "--hooks-file",
                str(hooks_file),
            ],
            self.data_dir / "control-plane.log",
        )
        api = ApiClient(f"http://127.0.0.1:{api_port}")
        wait_until(lambda: self._healthy(api), 60, "the control plane API")
        api.close()
        # The control plane wrote its first admin token on start-up (auth is on by default).
        token_file = self.data_dir / "control-plane" / "admin.token"
        token = token_file.read_text().strip() if token_file.exists() else None
        api = ApiClient(f"http://127.0.0.1:{api_port}", token=token)
        self.step(f"control plane API on http://127.0.0.1:{api_port} (OpenAPI at /docs)")
        timings["start_services_s"] = time.monotonic() - started

        t0 = time.monotonic()
        model = train_digits_model()
        timings["train_s"] = time.monotonic() - t0
        self.step(
            f"trained digits MLP: holdout accuracy {model.holdout_accuracy:.3f}, "
            f"ONNX {len(model.onnx_bytes)} bytes"
        )
        registered = api.register_model(
            name=MODEL_NAME,
            version="1",
            model=model.onnx_bytes,
            samples=model.samples,
            holdout_x=model.holdout_x,  # the gate judges candidates on it; never calibrates
            holdout_y=model.holdout_y,
        )
        self.step(f"registered model {registered['name']} v{registered['version']}")
        bundles = {profile: self._build(api, profile) for profile in self.profiles}

        root_path = self.data_dir / "root.json"
        root_path.write_bytes(api.trust_root())
        device_ports: dict[str, int] = {}
        device_profiles: dict[str, str] = {}
        for i in range(1, self.n_agents + 1):
            device_id = f"dev-demo{i:04d}"
            profile = self.profiles[(i - 1) % len(self.profiles)]
            agent_dir = self.data_dir / "agents" / device_id
            agent_dir.mkdir(parents=True, exist_ok=True)
            config = agent_dir / "agent.toml"
            port = write_agent_config(
                config,
                device_id=device_id,
                profile=profile,
                broker=broker_url,
                data_dir=agent_dir / "data",
                trust_root=root_path,
            )
            self.processes.start_module(
                device_id,
                "edgefleet.agent",
                ["run", "--config", str(config)],
                agent_dir / "agent.log",
            )
            device_ports[device_id] = port
            device_profiles[device_id] = profile
        wait_until(
            lambda: self._online(api, set(device_ports)), 60, f"{self.n_agents} agents online"
        )
        self.step(f"{self.n_agents} agents online: {', '.join(device_ports)}")

        t0 = time.monotonic()
        rollout_ids = []
        for profile, bundle in bundles.items():
            targets = [d for d, p in device_profiles.items() if p == profile]
            if not targets:
                continue
            rollout = api.create_rollout(bundle_id=bundle["id"], device_ids=targets)
            rollout_ids.append(rollout["id"])
            self.step(
                f"rollout {rollout['id']} of {bundle['id']} started to {len(targets)} {profile}"
            )
        rollouts = self._watch_rollouts(api, rollout_ids, len(device_ports))
        timings["rollout_s"] = time.monotonic() - t0

        devices = []
        rows = {row["device_id"]: row for r in rollouts for row in r["devices"]}
        for device_id, port in device_ports.items():
            row = rows.get(device_id, {})
            bundle = bundles[device_profiles[device_id]]
            active = row.get("state") == "active"
            devices.append(
                DeviceResult(
                    device_id=device_id,
                    profile=device_profiles[device_id],
                    state=row.get("state", "unknown"),
                    bundle_id=bundle["id"] if active else None,
                    release=bundle["release"] if active else None,
                    install_seconds=row.get("install_seconds"),
                    accuracy=infer_accuracy(port, model.holdout_x, model.holdout_y)
                    if active
                    else None,
                    reason=row.get("reason"),
                )
            )
        rollout_state = (
            "complete" if all(r["state"] == "complete" for r in rollouts) else "incomplete"
        )
        drift = None
        if self.with_drift and rollout_state == "complete":
            t0 = time.monotonic()
            drift = run_drift_phase(
                api=api,
                console=self.console,
                device_ports=device_ports,
                model=model,
                timeout=max(self.timeout, 180.0),
            )
            timings["drift_loop_s"] = time.monotonic() - t0
        timings["total_s"] = time.monotonic() - started
        api.close()
        return DemoResult(
            bundles={
                profile: {
                    "id": b["id"],
                    "release": b["release"],
                    "candidate": b["manifest"]["lineage"].get("candidate"),
                }
                for profile, b in bundles.items()
            },
            model_version="1",
            rollout_state=rollout_state,
            devices=devices,
            timings=timings,
            drift=drift,
        )

    def _build(self, api: ApiClient, profile: str) -> dict[str, Any]:
        """Build and sign the bundle for one device class, saying what the gate chose."""
        bundle = api.build_bundle(model=MODEL_NAME, version="1", profile=profile)
        metrics = bundle["manifest"].get("metrics", {})
        self.step(
            f"{profile}: gate chose {bundle['manifest']['lineage'].get('candidate')} of "
            f"{len(bundle['manifest'].get('candidates', []))} candidates: accuracy "
            f"{metrics.get('accuracy', 0):.3f}, agreement {metrics.get('agreement', 0):.3f}"
            + ("" if metrics.get("verified") else " (unverified: no labels)")
        )
        self.step(
            f"built signed bundle {bundle['id']} (release {bundle['release']}, "
            f"{bundle['length']} bytes, sha256 {bundle['sha256'][:12]}…)"
        )
        return bundle

    def _healthy(self, api: ApiClient) -> bool:
        self.processes.check_alive()
        try:
            return api.health().get("status") == "ok"
        except Exception:
            return False

    def _online(self, api: ApiClient, wanted: set[str]) -> bool:
        self.processes.check_alive()
        online = {d["id"] for d in api.list_devices() if d.get("online")}
        return wanted <= online

    def _watch_rollouts(
        self, api: ApiClient, rollout_ids: list[int], total: int
    ) -> list[dict[str, Any]]:
        with Progress(
            TextColumn("[bold]rollout[/]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} active"),
            TextColumn("{task.fields[states]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            task = progress.add_task("rollout", total=total, states="")
            deadline = time.monotonic() + self.timeout
            while True:
                self.processes.check_alive()
                rollouts = [api.get_rollout(rollout_id) for rollout_id in rollout_ids]
                counts: dict[str, int] = {}
                for rollout in rollouts:
                    for state, n in rollout.get("counts", {}).items():
                        counts[state] = counts.get(state, 0) + n
                progress.update(
                    task,
                    completed=counts.get("active", 0),
                    states=" ".join(f"{k}={v}" for k, v in sorted(counts.items())),
                )
                if all(r["state"] in ("complete", "failed") for r in rollouts):
                    return rollouts
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rollouts {rollout_ids} not finished after {self.timeout}s")
                time.sleep(0.2)


def print_summary(console: Console, result: DemoResult) -> None:
    """One row per device; a device that is not active shows its state and reason instead
    of its model. Borderless so that it fits an 80-column terminal."""
    table = Table(
        title=f"digits v{result.model_version} on {len(result.bundles)} device classes",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    for column in ("device", "profile", "model", "install", "accuracy"):
        table.add_column(column, overflow="fold")
    for d in result.devices:
        active = d.state == "active" and d.bundle_id
        table.add_row(
            d.device_id,
            d.profile,
            str(result.bundles[d.profile]["candidate"])
            if active
            else (d.state if d.reason is None else f"{d.state}: {d.reason}"),
            f"{d.install_seconds:.2f} s" if d.install_seconds is not None else "-",
            f"{d.accuracy:.3f}" if d.accuracy is not None else "-",
        )
    console.print(table)
    console.print(
        "rollout "
        + result.rollout_state
        + " · "
        + " · ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in result.timings.items())
    )


def write_summary(path: Path, result: DemoResult) -> None:
    path.write_text(json.dumps({**asdict(result), "ok": result.ok}, indent=2))
