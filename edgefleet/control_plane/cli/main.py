"""The ``edgefleet`` command: run the control plane and drive the fleet.

``serve`` runs the API and fleet link against an existing broker; ``up`` also starts
a private Mosquitto; ``demo`` runs the whole spine end to end. The other commands
talk to a running control plane over its HTTP API (``--api`` or ``EDGEFLEET_API``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from edgefleet.control_plane.client import ApiClient, ApiError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Run the edgefleet control plane and drive the fleet through its API.",
)
model_app = typer.Typer(no_args_is_help=True, help="Register and list model versions.")
bundle_app = typer.Typer(no_args_is_help=True, help="Build and list signed bundles.")
device_app = typer.Typer(no_args_is_help=True, help="See the fleet.")
rollout_app = typer.Typer(no_args_is_help=True, help="Roll bundles out to devices.")
trust_app = typer.Typer(no_args_is_help=True, help="Trust material devices are given.")
drift_app = typer.Typer(no_args_is_help=True, help="Input drift the fleet reports.")
retraining_app = typer.Typer(no_args_is_help=True, help="Retraining requests from the drift loop.")
policy_app = typer.Typer(no_args_is_help=True, help="Per-model drift-loop policy.")
hook_app = typer.Typer(no_args_is_help=True, help="Retraining hooks an admin defined.")
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys of the bundle repository.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (admin).")
audit_app = typer.Typer(no_args_is_help=True, help="Who did what to rollouts, and why.")
app.add_typer(model_app, name="model")
app.add_typer(bundle_app, name="bundle")
app.add_typer(device_app, name="device")
app.add_typer(rollout_app, name="rollout")
app.add_typer(trust_app, name="trust")
app.add_typer(drift_app, name="drift")
app.add_typer(retraining_app, name="retraining")
app.add_typer(policy_app, name="policy")
app.add_typer(hook_app, name="hook")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")

console = Console()
err_console = Console(stderr=True)

ApiOption = Annotated[
    str, typer.Option("--api", envvar="EDGEFLEET_API", help="control-plane base URL")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
DEFAULT_API = "http://127.0.0.1:8080"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def _client(api: str) -> ApiClient:
    return ApiClient(api)


def _fail(error: Exception) -> typer.Exit:
    err_console.print(f"[red]error:[/] {error}")
    return typer.Exit(1)


def _table(rows: list[dict[str, Any]], columns: list[str], title: str) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    return table


# -- running the control plane ----------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address the API binds to")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8080,
    broker: Annotated[str, typer.Option(envvar="EDGEFLEET_BROKER_URL")] = "mqtt://127.0.0.1:1883",
    data_dir: Annotated[Path, typer.Option(envvar="EDGEFLEET_DATA_DIR")] = Path(".edgefleet"),
    database_url: Annotated[str | None, typer.Option(envvar="EDGEFLEET_DATABASE_URL")] = None,
    hooks_file: Annotated[
        Path | None,
        typer.Option(
            envvar="EDGEFLEET_RETRAINING_HOOKS_FILE",
            help="TOML file of the retraining hooks policies may select",
        ),
    ] = None,
    log_level: str = "info",
) -> None:
    """Run the control-plane API and fleet link against a running broker."""
    import uvicorn

    from edgefleet.control_plane.app import create_app, server_options
    from edgefleet.control_plane.core.settings import Settings

    _setup_logging(log_level)
    settings = Settings(
        data_dir=data_dir,
        broker_url=broker,
        database_url=database_url,
        retraining_hooks_file=hooks_file,
    )
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=log_level, **server_options(settings)
    )


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def up(
    port: Annotated[int, typer.Option(help="API port")] = 8080,
    mqtt_port: Annotated[int, typer.Option(help="port of the private Mosquitto")] = 1883,
    data_dir: Annotated[Path, typer.Option(envvar="EDGEFLEET_DATA_DIR")] = Path(".edgefleet"),
    log_level: str = "info",
    mqtt_tls: Annotated[
        bool,
        typer.Option(
            "--mqtt-tls",
            help="devices connect over TLS with client certificates from the control "
            "plane's CA (<data_dir>/pki) and enrol with a CSR",
        ),
    ] = False,
    https: Annotated[
        bool, typer.Option("--https", help="serve the API over HTTPS with a cert from the CA")
    ] = False,
    https_cert: Annotated[
        Path | None, typer.Option(help="the API's own certificate (PEM), with --https-key")
    ] = None,
    https_key: Annotated[Path | None, typer.Option(help="its private key (PEM)")] = None,
    tls_host: Annotated[
        list[str] | None,
        typer.Option(help="name or IP devices use to reach this machine (repeatable)"),
    ] = None,
    bind: Annotated[
        str, typer.Option(help="address the API and broker listen on (non-loopback: TLS only)")
    ] = "127.0.0.1",
) -> None:
    """Start a private Mosquitto and the control plane; run until Ctrl-C.

    Plain by default (anonymous broker, HTTP, loopback). docs/tls.md describes
    ``--mqtt-tls`` and ``--https``.
    """
    import uvicorn
    from sqlmodel import Session

    from edgefleet.control_plane.app import create_app, server_options
    from edgefleet.control_plane.broker.link import stable_client_id
    from edgefleet.control_plane.broker.mosquitto import (
        MosquittoBroker,
        let_broker_enter,
        prepare_tls,
    )
    from edgefleet.control_plane.broker.security import BrokerAuthFiles
    from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
    from edgefleet.control_plane.core.errors import ControlPlaneError
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.control_plane.services.enrolment import apply_to_broker
    from edgefleet.control_plane.trust.pki import (
        CertificateAuthority,
        IssuingCa,
        PkiFiles,
        ensure_server_files,
    )

    _setup_logging(log_level)
    if (https_cert is None) != (https_key is None):
        raise _fail(ValueError("--https-cert and --https-key go together"))
    if bind not in LOOPBACK and not mqtt_tls:
        raise _fail(ValueError("an anonymous broker stays on loopback: add --mqtt-tls to --bind"))
    https = https or https_cert is not None
    hosts = list(dict.fromkeys([*LOOPBACK[:2], *(tls_host or [])]))
    # Everything written from here on (database, keys, tokens, the broker's files) is
    # this process's alone: files 0600, directories 0700.
    os.umask(0o077)
    let_broker_enter(data_dir)
    settings = Settings(data_dir=data_dir, broker_url=f"mqtt://127.0.0.1:{mqtt_port}")
    pki = PkiFiles(data_dir / "pki")
    security = tls = ca = None
    try:
        if mqtt_tls or (https and https_cert is None):
            ca = CertificateAuthority.load_or_create(pki, passphrase=settings.key_passphrase_bytes)
        if mqtt_tls and ca is not None:
            security = BrokerAuthFiles(data_dir / "broker" / "auth")
            client_id = settings.client_id or stable_client_id(data_dir)
            tls = prepare_tls(pki, ca, security, hosts=hosts, control_name=client_id)
            settings = Settings(
                data_dir=data_dir,
                broker_url=f"mqtts://127.0.0.1:{mqtt_port}",
                client_id=client_id,
                broker_auth_dir=security.directory,
                pki_dir=pki.directory,
                broker_ca_file=pki.ca_cert,
                broker_cert_file=pki.client_cert(client_id),
                broker_key_file=pki.client_key(client_id),
            )
        elif https and https_cert is None and ca is not None:
            ensure_server_files(pki, ca, hosts)
    except (ControlPlaneError, OSError, ValueError) as e:
        raise _fail(e) from e
    broker = MosquittoBroker(
        data_dir / "broker", port=mqtt_port, security=security, tls=tls, bind=bind
    )
    try:
        if security is not None and ca is not None:
            # The database is the record of who is enrolled and revoked: write it
            # (and the CRL) where the broker's configuration is rendered from. A pid
            # file left by a crash names no broker of ours: nothing to signal yet.
            security.pid_file.unlink(missing_ok=True)
            engine = make_engine(settings)
            create_db_and_tables(engine)
            with Session(engine) as session:
                apply_to_broker(session=session, files=security, issuer=IssuingCa(pki, ca))
            engine.dispose()
        broker.start()
    except (ControlPlaneError, OSError) as e:
        broker.stop()
        raise _fail(e) from e
    scheme = "https" if https else "http"
    console.print(f"[green]broker[/]        {broker.url}")
    console.print(f"[green]control plane[/] {scheme}://{bind}:{port}  (OpenAPI at /docs)")
    if ca is not None:
        console.print(f"[green]CA[/]            {pki.ca_cert.resolve()}")
    console.print(f"[green]data[/]          {data_dir.resolve()}")
    console.print("Ctrl-C stops both.")
    ssl_files: dict[str, Any] = {}
    if https:
        ssl_files = {
            "ssl_certfile": str(https_cert or pki.server_cert),
            "ssl_keyfile": str(https_key or pki.server_key),
        }
    try:
        uvicorn.run(
            create_app(settings),
            host=bind,
            port=port,
            log_level=log_level,
            **ssl_files,
            **server_options(settings),
        )
    finally:
        broker.stop()


@app.command()
def demo(
    agents: Annotated[int, typer.Option(min=1, max=50, help="number of device agents")] = 3,
    broker: Annotated[
        str | None, typer.Option(help="use this broker (mqtt://host:port) instead of a private one")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="keep everything here instead of a temp dir")
    ] = None,
    summary_json: Annotated[
        Path | None, typer.Option(help="also write the summary as JSON to this file")
    ] = None,
    timeout: Annotated[float, typer.Option(help="seconds the rollout may take")] = 120.0,
    drift: Annotated[
        bool, typer.Option("--drift", help="then shift some devices' inputs and close the loop")
    ] = False,
    profiles: Annotated[
        str | None,
        typer.Option(
            help="comma-separated device classes to spread the agents over "
            "(default: two this machine runs; --drift uses the first)"
        ),
    ] = None,
) -> None:
    """Broker, control plane and N agents; train, sign per class, roll out, infer, report."""
    from edgefleet_demo.spine import Demo, print_summary, write_summary

    _setup_logging("warning")
    started = time.monotonic()
    # A Ctrl-C or SIGTERM must still stop every child the demo started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = Demo(
            agents=agents,
            console=console,
            broker_url=broker,
            data_dir=data_dir,
            timeout=timeout,
            drift=drift,
            profiles=[p.strip() for p in profiles.split(",") if p.strip()] if profiles else None,
        ).run()
    except (TimeoutError, RuntimeError, ApiError, OSError) as e:
        raise _fail(e) from e
    print_summary(console, result)
    if summary_json:
        write_summary(summary_json, result)
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")
    if not result.ok:
        raise typer.Exit(1)


# -- models, bundles, devices, rollouts --------------------------------------------


@model_app.command("register")
def model_register(
    name: str,
    version: str,
    file: Annotated[Path, typer.Option("--file", exists=True, dir_okay=False, help="ONNX model")],
    samples: Annotated[
        Path,
        typer.Option(exists=True, dir_okay=False, help=".npy float32 [n, features] sample inputs"),
    ],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Register an ONNX model version with representative sample inputs."""
    try:
        with _client(api) as client:
            model = client.register_model(
                name=name,
                version=version,
                model=file.read_bytes(),
                samples=np.load(samples, allow_pickle=False),
            )
    except (ApiError, ValueError, OSError) as e:
        raise _fail(e) from e
    console.print(f"registered {model['name']} v{model['version']} sha256 {model['sha256']}")


@model_app.command("list")
def model_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List registered model versions."""
    try:
        with _client(api) as client:
            rows = client.list_models()
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    console.print(_table(rows, ["name", "version", "size_bytes", "sha256", "created_at"], "models"))


@bundle_app.command("build")
def bundle_build(
    model: Annotated[str, typer.Option(help="model name")],
    version: Annotated[str, typer.Option(help="model version")],
    profile: Annotated[str, typer.Option(help="firmware profile")],
    holdout: Annotated[
        Path | None,
        typer.Option(help="gate holdout .npz with x and y (default: the registered one)"),
    ] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(help="largest accuracy drop the gate allows (default: profile)")
    ] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Build every candidate for a firmware profile, gate them, sign and publish the best."""
    holdout_x = holdout_y = None
    if holdout is not None:
        with np.load(holdout, allow_pickle=False) as npz:
            holdout_x = npz["x"]
            holdout_y = npz["y"] if "y" in npz.files else None
    try:
        with (
            _client(api) as client,
            console.status(
                f"building {model} v{version} for {profile}: quantizing, measuring, gating"
            ),
        ):
            bundle = client.build_bundle(
                model=model,
                version=version,
                profile=profile,
                max_accuracy_drop=max_accuracy_drop,
                holdout_x=holdout_x,
                holdout_y=holdout_y,
            )
    except ApiError as e:
        raise _fail(e) from e
    console.print(_candidates_table(bundle["manifest"].get("candidates", [])))
    metrics = bundle["manifest"].get("metrics", {})
    verified = "verified" if metrics.get("verified") else "UNVERIFIED (no labels)"
    console.print(
        f"bundle {bundle['id']} release {bundle['release']} "
        f"{bundle['length']} bytes sha256 {bundle['sha256']} gate {verified}"
    )


def _candidates_table(rows: list[dict[str, Any]]) -> Table:
    """Candidate, accuracy, drop, agreement, size, latency, chosen: one row per candidate."""
    table = Table(title="candidates")
    for column in (
        "candidate",
        "accuracy",
        "drop",
        "agreement",
        "size",
        "latency ms",
        "verdict",
        "chosen",
    ):
        table.add_column(column)

    def num(value: Any, digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        table.add_row(
            row["candidate"],
            num(row.get("accuracy")),
            num(row.get("drop")),
            num(row.get("agreement")),
            str(row.get("size_bytes", "")),
            num(row.get("latency_ms"), 3),
            row.get("verdict", "")
            + (
                ""
                if row.get("verdict") == "passed"
                else f" ({'; '.join(row.get('reasons') or [])})"
            ),
            "*" if row.get("chosen") else "",
        )
    return table


@bundle_app.command("list")
def bundle_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List signed bundles."""
    try:
        with _client(api) as client:
            rows = client.list_bundles()
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    columns = ["id", "model", "model_version", "profile", "release", "length", "created_at"]
    console.print(_table(rows, columns, "bundles"))


@device_app.command("list")
def device_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """List devices with their presence and installed bundle."""
    try:
        with _client(api) as client:
            rows = client.list_devices()
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    columns = ["id", "profile", "online", "bundle_id", "release", "last_seen"]
    console.print(_table(rows, columns, "devices"))


def _parse_labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"label {pair!r} is not key=value")
        labels[key] = value
    return labels


@device_app.command("label")
def device_label(
    device_id: str,
    label: Annotated[list[str], typer.Argument(help="key=value (replaces all labels)")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Set a device's labels, which rollout selectors match."""
    try:
        with _client(api) as client:
            device = client.set_device_labels(device_id, _parse_labels(label))
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"{device['id']} labels {device['labels']}")


@device_app.command("group")
def device_group(
    name: str,
    device: Annotated[list[str], typer.Argument(help="member device ids (replaces the group)")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Create or replace a device group, which rollout selectors can name."""
    try:
        with _client(api) as client:
            group = client.set_group(name, device)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"group {group['name']}: {len(group['device_ids'])} devices")


@rollout_app.command("create")
def rollout_create(
    bundle: Annotated[str, typer.Option(help="bundle id")],
    device: Annotated[
        list[str] | None,
        typer.Option(help="target device id (repeatable); default: all of the profile"),
    ] = None,
    group: Annotated[list[str] | None, typer.Option(help="device group (repeatable)")] = None,
    label: Annotated[list[str] | None, typer.Option(help="key=value the devices carry")] = None,
    waves: Annotated[
        str, typer.Option(help="cumulative waves, counts or shares: 1,10%,50%,100%")
    ] = "100%",
    soak: Annotated[float, typer.Option(help="seconds each wave soaks before its gates")] = 0.0,
    max_install_failure_rate: Annotated[float | None, typer.Option()] = None,
    max_error_rate: Annotated[float | None, typer.Option()] = None,
    max_latency_ratio: Annotated[
        float | None, typer.Option(help="p95 on the new bundle / p95 on the previous one")
    ] = None,
    min_agreement: Annotated[float | None, typer.Option()] = None,
    min_inferences: Annotated[int, typer.Option(help="telemetry a wave needs first")] = 0,
    strategy: Annotated[str, typer.Option(help="canary | blue_green | shadow")] = "canary",
    manual: Annotated[bool, typer.Option("--manual", help="wait for promote after each wave")] = (
        False
    ),
    draft: Annotated[bool, typer.Option("--draft", help="create without starting")] = False,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Roll a bundle out in waves, with health gates between them."""
    selector: dict[str, Any] = {}
    if group:
        selector["groups"] = group
    if label:
        selector["labels"] = _parse_labels(label)
    gates = {
        "max_install_failure_rate": max_install_failure_rate,
        "max_error_rate": max_error_rate,
        "max_p95_latency_ratio": max_latency_ratio,
        "min_agreement": min_agreement,
        "min_inferences": min_inferences,
    }
    try:
        with _client(api) as client:
            rollout = client.create_rollout(
                bundle_id=bundle,
                device_ids=device,
                selector=selector or None,
                waves=[w.strip() for w in waves.split(",") if w.strip()],
                soak_seconds=soak,
                gates={k: v for k, v in gates.items() if v is not None},
                strategy=strategy,
                mode="manual" if manual else "automatic",
                start=not draft,
            )
    except ApiError as e:
        raise _fail(e) from e
    sizes = [w["size"] for w in rollout.get("wave_status", [])]
    console.print(
        f"rollout {rollout['id']} {rollout['state']} to {len(rollout['devices'])} devices"
        f" in waves of {sizes}"
    )


_DEVICE_COLUMNS = (
    ("pending", ("pending",)),
    ("downloading", ("offered", "downloading", "verified", "staged", "smoke_tested")),
    ("active", ("active", "shadowing")),
    ("failed", ("failed",)),
    ("rolled back", ("rolling_back", "rolled_back")),
    ("other", ("superseded", "cancelled")),
)


def _rollout_table(rollout: dict[str, Any]) -> Table:
    """Per wave: devices by state and gate values against thresholds."""
    title = (
        f"rollout {rollout['id']} · {rollout['bundle_id']} · {rollout['state']}"
        f" · wave {rollout.get('wave', 1)}/{rollout.get('wave_count', 1)}"
        f" {rollout.get('phase', '')} · {rollout.get('strategy', 'canary')}"
        f" {rollout.get('mode', 'automatic')}"
    )
    table = Table(title=title, caption=rollout.get("reason") or None)
    table.add_column("wave")
    table.add_column("size")
    table.add_column("state")
    for name, _states in _DEVICE_COLUMNS:
        table.add_column(name, justify="right")
    table.add_column("gates")
    for wave in rollout.get("wave_status") or []:
        counts = wave.get("counts", {})
        gates = []
        for gate in wave.get("gates", []):
            value = "-" if gate["value"] is None else f"{gate['value']:.3f}"
            mark = "[green]ok[/]" if gate["ok"] else "[red]BREACH[/]"
            gates.append(f"{gate['name']} {value} / {gate['threshold']} {mark}")
        table.add_row(
            str(wave["wave"]),
            str(wave["size"]),
            wave["state"],
            *(str(sum(counts.get(s, 0) for s in states)) for _n, states in _DEVICE_COLUMNS),
            "\n".join(gates) or "-",
        )
    return table


def _devices_table(rollout: dict[str, Any]) -> Table:
    return _table(
        rollout["devices"],
        ["device_id", "wave", "state", "install_seconds", "reason", "updated_at"],
        "devices",
    )


@rollout_app.command("status")
def rollout_status(
    rollout_id: int,
    watch: Annotated[
        bool, typer.Option("--watch", help="live view until the rollout ends")
    ] = False,
    devices: Annotated[bool, typer.Option("--devices", help="also list every device")] = False,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Waves, device states and gate values of a rollout."""
    try:
        with _client(api) as client:
            rollout = client.get_rollout(rollout_id)
            if as_json:
                console.print_json(json.dumps(rollout))
                return
            if not watch:
                console.print(_rollout_table(rollout))
                if devices:
                    console.print(_devices_table(rollout))
                return
            with Live(_rollout_table(rollout), console=console, refresh_per_second=4) as live:
                while rollout["state"] in ("in_progress", "paused", "draft"):
                    time.sleep(0.5)
                    rollout = client.get_rollout(rollout_id)
                    live.update(_rollout_table(rollout))
    except ApiError as e:
        raise _fail(e) from e


def _rollout_action(action: str, rollout_id: int, reason: str | None, api: str) -> None:
    try:
        with _client(api) as client:
            rollout = client.act_on_rollout(rollout_id, action, reason=reason)
    except ApiError as e:
        raise _fail(e) from e
    console.print(
        f"rollout {rollout['id']} {rollout['state']} (wave {rollout['wave']}, {rollout['phase']})"
    )


ReasonOption = Annotated[str | None, typer.Option(help="why: recorded in the audit log")]


@rollout_app.command("start")
def rollout_start(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Start a draft rollout."""
    _rollout_action("start", rollout_id, reason, api)


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Start no new wave until resumed."""
    _rollout_action("pause", rollout_id, reason, api)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Resume a paused rollout."""
    _rollout_action("resume", rollout_id, reason, api)


@rollout_app.command("promote")
def rollout_promote(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Start the next wave of a manual rollout whose wave passed its gates."""
    _rollout_action("promote", rollout_id, reason, api)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Stop the rollout; the current wave's devices roll back."""
    _rollout_action("abort", rollout_id, reason, api)


@rollout_app.command("rollback")
def rollout_rollback(
    rollout_id: int, reason: ReasonOption = None, api: ApiOption = DEFAULT_API
) -> None:
    """Roll every device that got the bundle back to its previous one."""
    _rollout_action("rollback", rollout_id, reason, api)


@audit_app.command("list")
def audit_list(
    rollout: Annotated[int | None, typer.Option(help="only this rollout")] = None,
    action: Annotated[str | None, typer.Option(help="only this action")] = None,
    limit: int = 100,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Operator actions and automatic decisions, newest first."""
    try:
        with _client(api) as client:
            rows = client.list_audit(rollout_id=rollout, action=action, limit=limit)
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    columns = ["ts", "actor", "action", "rollout_id", "target", "reason"]
    console.print(_table(rows, columns, "audit"))


@trust_app.command("root")
def trust_root(
    output: Annotated[Path, typer.Option("-o", "--output", help="where to write root.json")],
    api: ApiOption = DEFAULT_API,
) -> None:
    """Save the current TUF root metadata, to give to devices at provisioning."""
    try:
        with _client(api) as client:
            output.write_bytes(client.trust_root())
    except (ApiError, OSError) as e:
        raise _fail(e) from e
    console.print(f"wrote {output}")


@drift_app.command("status")
def drift_status(
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """The fleet drift rule per model version and cohort."""
    try:
        with _client(api) as client:
            rows = client.drift_status(model=model)
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    columns = ["model", "model_version", "cohort", "devices_reporting", "share", "fires"]
    console.print(_table(rows, columns, "fleet drift"))


@drift_app.command("plot")
def drift_plot(
    output: Annotated[Path, typer.Option("-o", "--output", help="PNG to write")] = Path(
        "drift.png"
    ),
    model: Annotated[str | None, typer.Option(help="only this model")] = None,
    version: Annotated[str | None, typer.Option(help="only this model version")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Plot drift over time per feature and cohort to a PNG."""
    from edgefleet.control_plane.drift.plot import plot_drift

    try:
        with _client(api) as client:
            points = client.drift_series(model=model, version=version)
        plot_drift(points, output)
    except (ApiError, OSError) as e:
        raise _fail(e) from e
    console.print(f"wrote {output} ({len(points)} drift windows)")


@retraining_app.command("list")
def retraining_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """Retraining requests, newest first, with their state and reason."""
    try:
        with _client(api) as client:
            rows = client.list_retraining()
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    columns = ["id", "model", "from_version", "new_version", "trigger", "state", "reason"]
    console.print(_table(rows, columns, "retraining requests"))


@retraining_app.command("request")
def retraining_request(
    model: str,
    version: Annotated[str, typer.Option(help="the model version to retrain from")],
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """File a retraining request by hand; the model's policy decides if it needs approval."""
    try:
        with _client(api) as client:
            row = client.request_retraining(model=model, version=version, reason=reason)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"request {row['id']} {row['state']}")


@retraining_app.command("approve")
def retraining_approve(request_id: int, api: ApiOption = DEFAULT_API) -> None:
    """Approve a request waiting for approval; the drift loop runs it next."""
    try:
        with _client(api) as client:
            row = client.decide_retraining(request_id, approve=True)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"request {row['id']} {row['state']}")


@retraining_app.command("reject")
def retraining_reject(
    request_id: int,
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Reject a request waiting for approval."""
    try:
        with _client(api) as client:
            row = client.decide_retraining(request_id, approve=False, reason=reason)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"request {row['id']} {row['state']}: {row['reason']}")


@policy_app.command("show")
def policy_show(model: str, api: ApiOption = DEFAULT_API) -> None:
    """The drift-loop policy of a model."""
    try:
        with _client(api) as client:
            console.print_json(json.dumps(client.get_policy(model)))
    except ApiError as e:
        raise _fail(e) from e


@policy_app.command("set")
def policy_set(
    model: str,
    retrain: Annotated[str | None, typer.Option(help="automatic | approval | off")] = None,
    hook: Annotated[
        str | None, typer.Option(help="a retraining hook an admin defined (edgefleet hook list)")
    ] = None,
    clear_hook: Annotated[bool, typer.Option("--clear-hook", help="select no hook")] = False,
    canary_devices: Annotated[int | None, typer.Option(min=1)] = None,
    margin: Annotated[float | None, typer.Option(help="accuracy the challenger must gain")] = None,
    cron: Annotated[str | None, typer.Option(help="crontab for scheduled retraining")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Change how drift on a model is handled; options not given keep their value."""
    if hook is not None and clear_hook:
        raise _fail(ValueError("give either --hook or --clear-hook"))
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "retrain": retrain,
            "hook": hook,
            "canary_device_count": canary_devices,
            "comparison_margin": margin,
            "retrain_cron": cron,
        }.items()
        if v is not None
    }
    if clear_hook:
        changes["hook"] = None
    if not changes:
        raise _fail(ValueError("nothing to change: give at least one option"))
    try:
        with _client(api) as client:
            console.print_json(json.dumps(client.set_policy(model, changes)))
    except ApiError as e:
        raise _fail(e) from e


@hook_app.command("list")
def hook_list(api: ApiOption = DEFAULT_API, as_json: JsonOption = False) -> None:
    """Retraining hooks an admin defined (EDGEFLEET_RETRAINING_HOOKS_FILE); policies pick one."""
    try:
        with _client(api) as client:
            rows = client.list_hooks()
    except ApiError as e:
        raise _fail(e) from e
    if as_json:
        console.print_json(json.dumps(rows))
        return
    console.print(_table(rows, ["name", "kind", "timeout_s", "description"], "retraining hooks"))


@keys_app.command("init")
def keys_init(
    data_dir: Annotated[Path, typer.Option(envvar="EDGEFLEET_DATA_DIR")] = Path(".edgefleet"),
    root_keys: Annotated[int, typer.Option(min=1, max=9)] = 3,
    root_threshold: Annotated[int, typer.Option(min=1, max=9)] = 2,
    passphrase: Annotated[
        str | None,
        typer.Option(envvar="EDGEFLEET_KEY_PASSPHRASE", help="encrypts the private keys"),
    ] = None,
) -> None:
    """Create the signed repository and its keys (before the control plane first starts)."""
    from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.control_plane.trust.repository import SignedRepository

    settings = Settings(data_dir=data_dir)
    if (settings.repository_dir / "metadata" / "root.json").exists():
        raise _fail(FileExistsError(f"a repository already exists in {settings.repository_dir}"))
    engine = make_engine(settings)
    create_db_and_tables(engine)
    try:
        repository = SignedRepository(
            settings.repository_dir,
            engine=engine,
            passphrase=passphrase.encode() if passphrase else None,
            root_keys=root_keys,
            root_threshold=root_threshold,
        )
    except ValueError as e:
        raise _fail(e) from e
    repository.init_or_load()
    _print_keys(repository.keys_summary())
    if not passphrase:
        err_console.print("[yellow]warning:[/] keys are not encrypted (no passphrase given)")
    console.print(
        f"Move the root key files ({repository.keyring.keys_dir}/root-*.pem) offline; "
        f"{root_threshold} of them are needed to rotate or revoke keys."
    )


def _print_keys(summary: list[dict[str, Any]]) -> None:
    rows = [
        {
            "role": r["role"],
            "threshold": r["threshold"],
            "keyid": k["keyid"][:16],
            "kind": k["kind"],
            "available": k["available"],
            "expires": r["expires"],
        }
        for r in summary
        for k in r["keys"]
    ]
    console.print(
        _table(rows, ["role", "threshold", "keyid", "kind", "available", "expires"], "keys")
    )


@keys_app.command("list")
def keys_list(api: ApiOption = DEFAULT_API) -> None:
    """Roles, thresholds and keys of the running control plane's repository."""
    try:
        with _client(api) as client:
            _print_keys(client.list_keys())
    except ApiError as e:
        raise _fail(e) from e


@keys_app.command("rotate")
def keys_rotate(
    role: str,
    keyid: Annotated[str | None, typer.Option(help="key to replace (prefix is enough)")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Replace a key; publishes a new root signed by the old and the new root keys."""
    try:
        with _client(api) as client:
            result = client.rotate_key(role, keyid)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"{result['role']} key rotated: new key {result['keyid'][:16]}")


@keys_app.command("revoke")
def keys_revoke(keyid: str, api: ApiOption = DEFAULT_API) -> None:
    """Remove a key from its role; refused when the role would fall below its threshold."""
    try:
        with _client(api) as client:
            result = client.revoke_key(keyid)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"{result['role']} key {result['keyid'][:16]} revoked")


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``3600s`` or plain seconds, as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return int(float(value[:-1]) * units[value[-1]])
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a duration like 30d, 12h or 90m") from None


@token_app.command("create")
def token_create(
    name: str,
    role: Annotated[str, typer.Option(help="viewer | operator | admin")] = "viewer",
    expires_in: Annotated[
        str | None, typer.Option(help="lifetime, e.g. 30d, 12h, 90m (default: no expiry)")
    ] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Issue an API token; its secret is printed once. Names are unique."""
    seconds = parse_duration(expires_in) if expires_in is not None else None
    try:
        with _client(api) as client:
            token = client.create_token(name=name, role=role, expires_in_s=seconds)
    except ApiError as e:
        raise _fail(e) from e
    expiry = f", expires {token['expires_at']}" if token.get("expires_at") else ""
    console.print(f"token {token['id']} ({token['role']}) for {token['name']}{expiry}:")
    console.print(token["token"], soft_wrap=True)


@token_app.command("list")
def token_list(api: ApiOption = DEFAULT_API) -> None:
    """Issued tokens (never their secrets)."""
    try:
        with _client(api) as client:
            rows = client.list_tokens()
    except ApiError as e:
        raise _fail(e) from e
    columns = ["id", "name", "role", "created_at", "expires_at", "revoked"]
    console.print(_table(rows, columns, "api tokens"))


@token_app.command("revoke")
def token_revoke(token_id: int, api: ApiOption = DEFAULT_API) -> None:
    """Revoke a token at once."""
    try:
        with _client(api) as client:
            client.revoke_token(token_id)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"token {token_id} revoked")


enrol_app = typer.Typer(no_args_is_help=True, help="Device enrolment (secured broker).")
app.add_typer(enrol_app, name="enrol")


@enrol_app.command("token")
def enrol_token(
    ttl: Annotated[int, typer.Option(help="seconds the token stays valid")] = 3600,
    note: Annotated[str | None, typer.Option(help="what the token is for")] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Issue a one-time enrolment token; its secret is printed once."""
    try:
        with _client(api) as client:
            # ApiClient has no typed method for this yet (client.py is edited elsewhere).
            token = client._call(
                "POST", "/enrolment/tokens", json={"ttl_seconds": ttl, "note": note}
            )
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"enrolment token {token['id']} valid until {token['expires_at']}:")
    console.print(token["token"], soft_wrap=True)


@device_app.command("revoke")
def device_revoke(device_id: str, api: ApiOption = DEFAULT_API) -> None:
    """Revoke a device's broker credentials and cut its live session."""
    try:
        with _client(api) as client:
            result = client._call("POST", f"/devices/{device_id}/revoke")
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"device {result['device_id']} revoked at {result['revoked_at']}")


repo_app = typer.Typer(
    no_args_is_help=True,
    help="The signed repository every replica shares (run where its database and "
    "shared directory are reachable; safe while replicas run).",
)
app.add_typer(repo_app, name="repo")
DataDirOption = Annotated[Path, typer.Option(envvar="EDGEFLEET_DATA_DIR")]
DatabaseOption = Annotated[str | None, typer.Option(envvar="EDGEFLEET_DATABASE_URL")]


def _open_repository(data_dir: Path, database_url: str | None) -> Any:
    from edgefleet.control_plane.core.db import make_engine
    from edgefleet.control_plane.core.settings import Settings
    from edgefleet.control_plane.trust.repository import SignedRepository

    settings = Settings(data_dir=data_dir, database_url=database_url)
    if not (settings.repository_dir / "keys" / "keyring.json").exists():
        raise _fail(FileNotFoundError(f"no repository in {settings.repository_dir}"))
    return SignedRepository(
        settings.repository_dir,
        engine=make_engine(settings),
        passphrase=settings.key_passphrase_bytes,
        replica="cli",
    )


def _print_versions(versions: dict[str, dict[str, Any]]) -> None:
    rows = [{"role": role, **info} for role, info in versions.items()]
    columns = ["role", "version", "device_trusts", "reported_by", "expires"]
    console.print(_table(rows, columns, "signed metadata"))


@repo_app.command("status")
def repo_status(
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Each role's latest signed version against the highest any device trusts."""
    versions = _open_repository(data_dir, database_url).versions()
    if as_json:
        console.print_json(json.dumps(versions))
    else:
        _print_versions(versions)


@repo_app.command("bump")
def repo_bump(
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
) -> None:
    """Re-sign every role past the highest version devices trust (after a restore)."""
    from edgefleet.control_plane.trust.keyring import SigningError

    repository = _open_repository(data_dir, database_url)
    try:
        signed = repository.bump()
    except SigningError as e:
        raise _fail(e) from e
    console.print("re-signed " + ", ".join(f"{r} v{v}" for r, v in signed.items()))
    _print_versions(repository.versions())


def main() -> None:
    app()
