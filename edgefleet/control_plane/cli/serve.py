"""``serve`` and ``up``: run the control plane in this process.

``serve`` expects a broker that runs elsewhere; ``up`` starts a private one through
:mod:`edgefleet.control_plane.local_stack`. Heavy imports (uvicorn, the app, the
database) happen inside the commands, so the API commands start fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from edgefleet.control_plane.cli.options import DatabaseOption, DataDirOption
from edgefleet.control_plane.cli.output import console, fail, setup_logging


def serve(
    host: Annotated[str, typer.Option(help="address the API binds to")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8080,
    broker: Annotated[str, typer.Option(envvar="EDGEFLEET_BROKER_URL")] = "mqtt://127.0.0.1:1883",
    data_dir: DataDirOption = Path(".edgefleet"),
    database_url: DatabaseOption = None,
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

    setup_logging(log_level)
    settings = Settings(
        data_dir=data_dir,
        broker_url=broker,
        database_url=database_url,
        retraining_hooks_file=hooks_file,
    )
    uvicorn.run(
        create_app(settings), host=host, port=port, log_level=log_level, **server_options(settings)
    )


def up(
    port: Annotated[int, typer.Option(help="API port")] = 8080,
    mqtt_port: Annotated[int, typer.Option(help="port of the private Mosquitto")] = 1883,
    data_dir: DataDirOption = Path(".edgefleet"),
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

    from edgefleet.control_plane.app import create_app, server_options
    from edgefleet.control_plane.core.errors import ControlPlaneError
    from edgefleet.control_plane.core.netutil import port_taken
    from edgefleet.control_plane.local_stack import LOOPBACK, start_local_stack

    setup_logging(log_level)
    # Refuse before anything starts: a private broker that cannot bind would leave
    # the control plane talking to whatever already listens there.
    host = "127.0.0.1" if bind == "localhost" else bind
    for taken, flag in ((mqtt_port, "--mqtt-port"), (port, "--port")):
        if port_taken(host, taken):
            raise fail(
                OSError(
                    f"port {taken} on {bind} is already in use (another broker or server?); "
                    f"stop it or choose a free port with {flag}"
                )
            )
    if (https_cert is None) != (https_key is None):
        raise fail(ValueError("--https-cert and --https-key go together"))
    if bind not in LOOPBACK and not mqtt_tls:
        raise fail(ValueError("an anonymous broker stays on loopback: add --mqtt-tls to --bind"))
    try:
        stack = start_local_stack(
            data_dir=data_dir,
            mqtt_port=mqtt_port,
            bind=bind,
            mqtt_tls=mqtt_tls,
            https=https,
            https_cert=https_cert,
            https_key=https_key,
            tls_hosts=tls_host or [],
        )
    except (ControlPlaneError, OSError, ValueError) as e:
        raise fail(e) from e
    with stack:
        scheme = "https" if stack.api_tls else "http"
        console.print(Text.assemble(("broker", "green"), f"        {stack.broker.url}"))
        console.print(
            Text.assemble(
                ("control plane", "green"), f" {scheme}://{bind}:{port}  (OpenAPI at /docs)"
            )
        )
        if stack.ca is not None:
            console.print(
                Text.assemble(("CA", "green"), f"            {stack.pki.ca_cert.resolve()}")
            )
        console.print(Text.assemble(("data", "green"), f"          {data_dir.resolve()}"))
        console.print("Ctrl-C stops both.")
        ssl_files: dict[str, Any] = {}
        if stack.api_tls:
            certfile, keyfile = stack.api_tls
            ssl_files = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
        uvicorn.run(
            create_app(stack.settings),
            host=bind,
            port=port,
            log_level=log_level,
            **ssl_files,
            **server_options(stack.settings),
        )
