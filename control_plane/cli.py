"""The ``edgefleet`` command: run the control plane and drive the fleet.

``serve`` runs the API and fleet link against an existing broker; ``up`` also starts
a private Mosquitto; ``demo`` runs the whole spine end to end. The other commands
talk to a running control plane over its HTTP API (``--api`` or ``EDGEFLEET_API``).
"""

from __future__ import annotations

import json
import logging
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from control_plane.client import ApiClient, ApiError

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
keys_app = typer.Typer(no_args_is_help=True, help="Signing keys of the bundle repository.")
token_app = typer.Typer(no_args_is_help=True, help="API tokens (admin).")
app.add_typer(model_app, name="model")
app.add_typer(bundle_app, name="bundle")
app.add_typer(device_app, name="device")
app.add_typer(rollout_app, name="rollout")
app.add_typer(trust_app, name="trust")
app.add_typer(drift_app, name="drift")
app.add_typer(retraining_app, name="retraining")
app.add_typer(policy_app, name="policy")
app.add_typer(keys_app, name="keys")
app.add_typer(token_app, name="token")

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
    log_level: str = "info",
) -> None:
    """Run the control-plane API and fleet link against a running broker."""
    import uvicorn

    from control_plane.app import create_app
    from control_plane.settings import Settings

    _setup_logging(log_level)
    settings = Settings(data_dir=data_dir, broker_url=broker, database_url=database_url)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="API port")] = 8080,
    mqtt_port: Annotated[int, typer.Option(help="port of the private Mosquitto")] = 1883,
    data_dir: Annotated[Path, typer.Option(envvar="EDGEFLEET_DATA_DIR")] = Path(".edgefleet"),
    log_level: str = "info",
) -> None:
    """Start a private Mosquitto and the control plane; run until Ctrl-C."""
    import uvicorn

    from control_plane.app import create_app
    from control_plane.broker import MosquittoBroker
    from control_plane.errors import BrokerError
    from control_plane.settings import Settings

    _setup_logging(log_level)
    broker = MosquittoBroker(data_dir / "broker", port=mqtt_port)
    try:
        broker.start()
    except BrokerError as e:
        raise _fail(e) from e
    console.print(f"[green]broker[/]        {broker.url}")
    console.print(f"[green]control plane[/] http://127.0.0.1:{port}  (OpenAPI at /docs)")
    console.print(f"[green]data[/]          {data_dir.resolve()}")
    console.print("Ctrl-C stops both.")
    settings = Settings(data_dir=data_dir, broker_url=broker.url)
    try:
        uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level=log_level)
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
) -> None:
    """Broker, control plane and N agents; train, sign, roll out, infer, report."""
    from control_plane.demo import Demo, print_summary, write_summary

    _setup_logging("warning")
    started = time.monotonic()
    # A Ctrl-C or SIGTERM must still stop every child the demo started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = Demo(
            agents=agents, console=console, broker_url=broker, data_dir=data_dir, timeout=timeout
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
    api: ApiOption = DEFAULT_API,
) -> None:
    """Build, sign and publish a bundle of a model version for one firmware profile."""
    try:
        with _client(api) as client, console.status(f"building {model} v{version} for {profile}"):
            bundle = client.build_bundle(model=model, version=version, profile=profile)
    except ApiError as e:
        raise _fail(e) from e
    console.print(
        f"bundle {bundle['id']} release {bundle['release']} "
        f"{bundle['length']} bytes sha256 {bundle['sha256']}"
    )


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


@rollout_app.command("create")
def rollout_create(
    bundle: Annotated[str, typer.Option(help="bundle id")],
    device: Annotated[
        list[str] | None,
        typer.Option(help="target device id (repeatable); default: all of the profile"),
    ] = None,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Offer a bundle to devices."""
    try:
        with _client(api) as client:
            rollout = client.create_rollout(bundle_id=bundle, device_ids=device)
    except ApiError as e:
        raise _fail(e) from e
    console.print(
        f"rollout {rollout['id']} {rollout['state']} to {len(rollout['devices'])} devices"
    )


def _rollout_table(rollout: dict[str, Any]) -> Table:
    counts = " ".join(f"{k}={v}" for k, v in sorted(rollout.get("counts", {}).items()))
    table = _table(
        rollout["devices"],
        ["device_id", "state", "install_seconds", "reason", "updated_at"],
        f"rollout {rollout['id']} · {rollout['bundle_id']} · {rollout['state']} · {counts}",
    )
    return table


@rollout_app.command("status")
def rollout_status(
    rollout_id: int,
    watch: Annotated[
        bool, typer.Option("--watch", help="live view until the rollout ends")
    ] = False,
    api: ApiOption = DEFAULT_API,
    as_json: JsonOption = False,
) -> None:
    """Per-device state of a rollout."""
    try:
        with _client(api) as client:
            rollout = client.get_rollout(rollout_id)
            if as_json:
                console.print_json(json.dumps(rollout))
                return
            if not watch:
                console.print(_rollout_table(rollout))
                return
            with Live(_rollout_table(rollout), console=console, refresh_per_second=4) as live:
                while rollout["state"] == "in_progress":
                    time.sleep(0.5)
                    rollout = client.get_rollout(rollout_id)
                    live.update(_rollout_table(rollout))
    except ApiError as e:
        raise _fail(e) from e


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
    from control_plane.drift_plot import plot_drift

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


@retraining_app.command("approve")
def retraining_approve(
    request_id: int,
    by: Annotated[str, typer.Option(help="who approves")] = "operator",
    api: ApiOption = DEFAULT_API,
) -> None:
    """Approve a request waiting for approval; the drift loop runs it next."""
    try:
        with _client(api) as client:
            row = client.decide_retraining(request_id, approve=True, by=by)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"request {row['id']} {row['state']}")


@retraining_app.command("reject")
def retraining_reject(
    request_id: int,
    reason: Annotated[str | None, typer.Option(help="why")] = None,
    by: Annotated[str, typer.Option(help="who rejects")] = "operator",
    api: ApiOption = DEFAULT_API,
) -> None:
    """Reject a request waiting for approval."""
    try:
        with _client(api) as client:
            row = client.decide_retraining(request_id, approve=False, by=by, reason=reason)
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
    retrain: Annotated[str, typer.Option(help="automatic | approval | off")] = "approval",
    hook_command: Annotated[
        str | None, typer.Option(help="retraining command (split like a shell would)")
    ] = None,
    hook_webhook: Annotated[str | None, typer.Option(help="retraining webhook URL")] = None,
    canary_devices: Annotated[int, typer.Option(min=1)] = 1,
    margin: Annotated[float, typer.Option(help="accuracy the challenger must gain")] = 0.0,
    api: ApiOption = DEFAULT_API,
) -> None:
    """Set how drift on a model is handled and which hook retrains it."""
    import shlex

    policy: dict[str, Any] = {
        "retrain": retrain,
        "canary_device_count": canary_devices,
        "comparison_margin": margin,
    }
    if hook_command and hook_webhook:
        raise _fail(ValueError("give either --hook-command or --hook-webhook"))
    if hook_command:
        policy |= {"hook_kind": "command", "hook_target": shlex.split(hook_command)}
    if hook_webhook:
        policy |= {"hook_kind": "webhook", "hook_target": hook_webhook}
    try:
        with _client(api) as client:
            console.print_json(json.dumps(client.set_policy(model, policy)))
    except ApiError as e:
        raise _fail(e) from e


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
    from control_plane.repository import SignedRepository
    from control_plane.settings import Settings

    settings = Settings(data_dir=data_dir)
    if (settings.repository_dir / "metadata" / "root.json").exists():
        raise _fail(FileExistsError(f"a repository already exists in {settings.repository_dir}"))
    try:
        repository = SignedRepository(
            settings.repository_dir,
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


@token_app.command("create")
def token_create(
    name: str,
    role: Annotated[str, typer.Option(help="viewer | operator | admin")] = "viewer",
    api: ApiOption = DEFAULT_API,
) -> None:
    """Issue an API token; its secret is printed once."""
    try:
        with _client(api) as client:
            token = client.create_token(name=name, role=role)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"token {token['id']} ({token['role']}) for {token['name']}:")
    console.print(token["token"], soft_wrap=True)


@token_app.command("list")
def token_list(api: ApiOption = DEFAULT_API) -> None:
    """Issued tokens (never their secrets)."""
    try:
        with _client(api) as client:
            rows = client.list_tokens()
    except ApiError as e:
        raise _fail(e) from e
    console.print(_table(rows, ["id", "name", "role", "created_at", "revoked"], "api tokens"))


@token_app.command("revoke")
def token_revoke(token_id: int, api: ApiOption = DEFAULT_API) -> None:
    """Revoke a token at once."""
    try:
        with _client(api) as client:
            client.revoke_token(token_id)
    except ApiError as e:
        raise _fail(e) from e
    console.print(f"token {token_id} revoked")


def main() -> None:
    app()
