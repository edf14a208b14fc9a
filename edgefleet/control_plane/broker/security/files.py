"""The auth directory: who the secured broker admits, as files it can start from.

The files (written atomically, 0600, owned by whoever owns the directory) are the
record a broker's configuration is rendered from when it starts (see
:mod:`.dynsec`); the package docstring lists them.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet import topics
from edgefleet.control_plane.broker.security.passwords import (
    hash_password,
    new_password,
    read_password_file,
    render_password_file,
    verify_password,
)
from edgefleet.control_plane.core.errors import BrokerError
from edgefleet.fileio import atomic_write

logger = logging.getLogger(__name__)

CONTROL_USER_RE = re.compile(r"^cp-[A-Za-z0-9_-]{1,60}$")
ADMIN_USER = "cp-admin"


@dataclass(frozen=True)
class BrokerAuthFiles:
    """Where a secured broker's credentials, device list and pid file live."""

    directory: Path

    @property
    def password_file(self) -> Path:
        return self.directory / "passwd"

    @property
    def devices_file(self) -> Path:
        return self.directory / "devices"

    @property
    def control_file(self) -> Path:
        return self.directory / "control-plane.passwd"

    @property
    def pid_file(self) -> Path:
        return self.directory / "broker.pid"

    @property
    def identities_file(self) -> Path:
        return self.directory / "control-plane.identities"

    @property
    def admin_file(self) -> Path:
        return self.directory / "admin.json"

    @property
    def crl_file(self) -> Path:
        """The broker's copy of the CRL (TLS mode)."""
        return self.directory / "crl.pem"


@dataclass(frozen=True)
class TlsListener:
    """The broker's TLS listener: its certificate and what client certificates must chain to."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path


@dataclass(frozen=True)
class Admin:
    """How the control plane reaches the broker's loopback admin listener."""

    port: int
    password: str = field(repr=False)
    username: str = ADMIN_USER
    host: str = "127.0.0.1"


def check_control_name(name: str) -> None:
    """Refuse a control-plane broker name that is not a ``cp-`` name (or is ``cp-admin``).

    Raises:
        ValueError: ``name`` may not act as the control plane.
    """
    if not CONTROL_USER_RE.fullmatch(name) or name == ADMIN_USER:
        raise ValueError(f"control-plane users must be cp- names, got {name!r}")


def check_device_id(device_id: str) -> None:
    """Refuse anything but a device id where the broker is told about a device.

    Raises:
        ValueError: ``device_id`` is not a device id.
    """
    if not topics.is_device_id(device_id):
        raise ValueError(f"not a device id: {device_id!r}")


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` at mode 0600, owned like its directory.

    The broker's directory belongs to the broker's user; a control plane running as
    root hands it each file it writes there (``fchown`` on the temp file, before the
    rename, so the path is never someone else's for a moment).
    """
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent = path.parent.stat()
    owned_by_other = os.geteuid() == 0 and (parent.st_uid, parent.st_gid) != (0, 0)
    atomic_write(
        path, data, mode=0o600, owner=(parent.st_uid, parent.st_gid) if owned_by_other else None
    )


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def add_control_user(files: BrokerAuthFiles, username: str) -> str:
    """Create (or reset) a control-plane broker user; returns its password, shown once.

    Takes effect when the broker next starts (``render_dynsec_config``).
    """
    check_control_name(username)
    password = new_password()
    entries = read_password_file(files.control_file)
    entries[username] = hash_password(password)
    write_private(files.control_file, render_password_file(entries).encode())
    logger.info("broker control-plane user written username=%s", username)
    return password


def read_identities(files: BrokerAuthFiles) -> list[str]:
    """Control-plane names that authenticate by certificate (missing file: none)."""
    return _read_lines(files.identities_file)


def add_control_identity(files: BrokerAuthFiles, name: str) -> None:
    """Let the certificate with ``CN=name`` (a ``cp-`` name) act as the control plane.

    Takes effect when the broker next starts.
    """
    check_control_name(name)
    names = sorted({*read_identities(files), name})
    write_private(files.identities_file, "".join(f"{n}\n" for n in names).encode())


def read_devices(files: BrokerAuthFiles) -> list[str]:
    """Enrolled, unrevoked device ids as last written (missing file: none)."""
    return _read_lines(files.devices_file)


def ensure_admin(files: BrokerAuthFiles, *, port: int, host: str = "127.0.0.1") -> Admin:
    """``cp-admin``'s login (password created once) and where it connects."""
    previous = read_admin(files)
    admin = Admin(port=port, host=host, password=previous.password if previous else new_password())
    record = {
        "host": admin.host,
        "port": admin.port,
        "username": admin.username,
        "password": admin.password,
    }
    write_private(files.admin_file, json.dumps(record).encode())
    if previous is None or not verify_password(
        admin.password, read_password_file(files.password_file).get(ADMIN_USER, "")
    ):
        entries = read_password_file(files.password_file)
        entries[ADMIN_USER] = hash_password(admin.password)
        write_private(files.password_file, render_password_file(entries).encode())
    return admin


def read_admin(files: BrokerAuthFiles) -> Admin | None:
    """The admin listener's login, or None when this broker has none."""
    try:
        raw = json.loads(files.admin_file.read_text())
        return Admin(
            port=int(raw["port"]),
            password=str(raw["password"]),
            host=str(raw.get("host", "127.0.0.1")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BrokerError(f"cannot read {files.admin_file}: {e}") from e


def write_auth_files(
    files: BrokerAuthFiles, *, devices: Mapping[str, str], revoked: Iterable[str] = ()
) -> None:
    """Record who the broker admits: ``devices`` (id -> ``$7$`` hash, or "" for a device
    that authenticates by certificate), minus ``revoked``.

    These files are what ``render_dynsec_config`` builds the broker's configuration
    from when it starts; a running broker is changed with ``DynsecAdmin``.
    """
    gone = set(revoked)
    for device_id in [*devices, *gone]:
        check_device_id(device_id)
    live = sorted(d for d in devices if d not in gone)
    entries = dict(read_password_file(files.control_file))
    admin = read_password_file(files.password_file).get(ADMIN_USER)
    if admin is not None:
        entries[ADMIN_USER] = admin
    entries.update({d: devices[d] for d in live if devices[d]})
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private(files.devices_file, "".join(f"{d}\n" for d in live).encode())
    write_private(files.password_file, render_password_file(entries).encode())
    logger.info("broker auth files written devices=%d revoked=%d", len(live), len(gone))


def install_crl(files: BrokerAuthFiles, source: Path) -> None:
    """Copy the CA's CRL to where the broker reads it (before a SIGHUP)."""
    write_private(files.crl_file, Path(source).read_bytes())


def install_tls(files: BrokerAuthFiles, tls: TlsListener) -> TlsListener:
    """Copy what the broker's TLS listener reads into the auth directory; the copies.

    The PKI directory holds the CA's key and stays the control plane's alone; the
    broker (possibly another user) gets its own certificate, key, CA and CRL.
    """
    copies = TlsListener(
        ca_file=files.directory / "ca.crt",
        cert_file=files.directory / "server.crt",
        key_file=files.directory / "server.key",
        crl_file=files.crl_file,
    )
    for source, target in (
        (tls.ca_file, copies.ca_file),
        (tls.cert_file, copies.cert_file),
        (tls.key_file, copies.key_file),
        (tls.crl_file, copies.crl_file),
    ):
        write_private(target, Path(source).read_bytes())
    return copies
