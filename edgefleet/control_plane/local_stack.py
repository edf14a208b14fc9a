"""A private broker and everything it needs, for a control plane on one machine.

``edgefleet up`` is the single caller: it parses options, calls
:func:`start_local_stack`, serves the API with the settings it returns, and stops the
stack when the server exits. The order here is what makes the stack safe to start:
the CA exists before any certificate is issued, the database and CRL say who is
enrolled before the broker renders its ACLs from them, and only then does the broker
accept connections.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session

from edgefleet.control_plane.broker.link import stable_client_id
from edgefleet.control_plane.broker.mosquitto import (
    MosquittoBroker,
    let_broker_enter,
    prepare_tls,
)
from edgefleet.control_plane.broker.security import BrokerAuthFiles
from edgefleet.control_plane.core.db import create_db_and_tables, make_engine
from edgefleet.control_plane.core.settings import Settings
from edgefleet.control_plane.services.enrolment import apply_to_broker
from edgefleet.control_plane.trust.pki import (
    CertificateAuthority,
    IssuingCa,
    PkiFiles,
    ensure_server_files,
)

__all__ = ["LOOPBACK", "LocalStack", "start_local_stack"]

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Addresses an anonymous broker may listen on."""


@dataclass
class LocalStack:
    """A running private broker and what the control plane needs to serve beside it.

    Stop it with :meth:`stop`, or use it as a context manager around the server.
    """

    settings: Settings
    """The control plane's settings, pointed at this broker (TLS files included)."""
    broker: MosquittoBroker
    pki: PkiFiles
    ca: CertificateAuthority | None
    """The control plane's CA, when TLS (MQTT or HTTPS) asked for one."""
    api_tls: tuple[Path, Path] | None
    """Certificate and key the API serves HTTPS with; ``None`` serves plain HTTP."""

    def stop(self) -> None:
        self.broker.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_local_stack(
    *,
    data_dir: Path,
    mqtt_port: int,
    bind: str = "127.0.0.1",
    mqtt_tls: bool = False,
    https: bool = False,
    https_cert: Path | None = None,
    https_key: Path | None = None,
    tls_hosts: Sequence[str] = (),
) -> LocalStack:
    """Create the CA, broker files and database as needed, then start Mosquitto.

    Sets the process umask to 0o077 first: everything written from then on
    (database, keys, tokens, the broker's files) is this process's alone.

    Args:
        data_dir: Where the database, keys, PKI and the broker's files live.
        mqtt_port: Port the private Mosquitto listens on.
        bind: Address the broker listens on; callers keep an anonymous broker
            (``mqtt_tls`` false) on a :data:`LOOPBACK` address.
        mqtt_tls: Devices connect over TLS with client certificates from the
            control plane's CA (``<data_dir>/pki``) and enrol with a CSR; the
            broker's ACLs come from the enrolment records in the database.
        https: Serve the API over HTTPS; without ``https_cert`` the CA issues a
            server certificate for ``tls_hosts``.
        https_cert: The API's own certificate (PEM), given with ``https_key``;
            implies ``https``.
        https_key: Its private key (PEM).
        tls_hosts: Extra names or IPs devices use to reach this machine, added to
            ``127.0.0.1`` and ``localhost`` in the certificates issued here.

    Returns:
        The started stack; the caller serves the API with ``settings`` and
        ``api_tls`` and stops the stack afterwards.

    Raises:
        ControlPlaneError: The CA, certificates, broker ACLs or the broker itself
            could not be set up (the broker is stopped again).
        OSError: A file could not be read or written.
        ValueError: A host name or key passphrase is not usable.
    """
    https = https or https_cert is not None
    hosts = list(dict.fromkeys([*LOOPBACK[:2], *tls_hosts]))
    os.umask(0o077)
    let_broker_enter(data_dir)
    settings = Settings(data_dir=data_dir, broker_url=f"mqtt://127.0.0.1:{mqtt_port}")
    pki = PkiFiles(data_dir / "pki")
    security = tls = ca = None
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
    broker = MosquittoBroker(
        data_dir / "broker", port=mqtt_port, security=security, tls=tls, bind=bind
    )
    try:
        if security is not None and ca is not None:
            _write_broker_records(settings, security, IssuingCa(pki, ca))
        broker.start()
    except BaseException:
        broker.stop()
        raise
    api_tls = None
    if https:
        api_tls = (https_cert or pki.server_cert, https_key or pki.server_key)
    return LocalStack(settings=settings, broker=broker, pki=pki, ca=ca, api_tls=api_tls)


def _write_broker_records(settings: Settings, security: BrokerAuthFiles, issuer: IssuingCa) -> None:
    """Write who is enrolled and revoked (ACLs and CRL) where the broker reads them.

    The database is the record; the broker's configuration is rendered from it. A pid
    file left by a crash names no broker of ours: nothing to signal yet.
    """
    security.pid_file.unlink(missing_ok=True)
    engine = make_engine(settings)
    create_db_and_tables(engine, auto_upgrade=settings.db_auto_upgrade)
    with Session(engine) as session:
        apply_to_broker(session=session, files=security, issuer=issuer)
    engine.dispose()
