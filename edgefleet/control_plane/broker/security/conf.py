"""The secured broker's ``mosquitto.conf`` lines, and reloading a running broker."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from edgefleet.control_plane.broker.security.files import BrokerAuthFiles, TlsListener
from edgefleet.control_plane.core.errors import BrokerError

logger = logging.getLogger(__name__)


def render_security_config(*, plugin: Path, dynsec_file: Path, admin_port: int | None) -> list[str]:
    """Global lines: no anonymous clients, the plugin, and the loopback admin listener.

    ``per_listener_settings false`` (the default) makes the plugin apply to every
    listener. The admin listener comes last and takes passwords only; devices on a
    TLS broker have none, and a password device is pinned to its own client id.
    """
    lines = [
        "allow_anonymous false",
        f"plugin {plugin}",
        f"plugin_opt_config_file {dynsec_file}",
    ]
    if admin_port is not None:
        lines.append(f"listener {admin_port} 127.0.0.1")
    return lines


def render_password_listener(*, port: int, bind: str) -> list[str]:
    """A password listener; the username is the client id (no session takeover by id)."""
    return [f"listener {port} {bind}", "use_username_as_clientid true"]


def render_tls_listener(*, port: int, bind: str, tls: TlsListener) -> list[str]:
    """A listener that admits only clients with a certificate from the CA, by its CN.

    ``use_username_as_clientid`` belongs to the listener it follows (Mosquitto 2.0), so
    these lines must come right after each other, before any other ``listener``.
    """
    return [
        f"listener {port} {bind}",
        f"cafile {tls.ca_file}",
        f"certfile {tls.cert_file}",
        f"keyfile {tls.key_file}",
        f"crlfile {tls.crl_file}",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ]


def reload_broker(files: BrokerAuthFiles) -> bool:
    """SIGHUP the broker named in ``broker.pid`` (it re-reads the CRL); False when no
    broker is known there.

    A broker managed elsewhere (systemd, a container) has no pid file here: its
    operator must reload it (``systemctl reload mosquitto``) after the CRL changes.
    """
    try:
        pid = int(files.pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        logger.warning("no broker pid file; reload the broker yourself path=%s", files.pid_file)
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        logger.warning("broker pid file is stale pid=%d", pid)
        return False
    except PermissionError as e:
        raise BrokerError(f"cannot signal broker pid {pid}: {e}") from e
    logger.info("broker reloaded pid=%d", pid)
    return True
