"""Mosquitto authentication and authorisation, generated and driven by the control plane.

The broker is the only thing that keeps one device out of another's topics: the
control plane files whatever arrives on ``fleet/<id>/up/...`` under ``<id>``, so the
broker must guarantee that only the device authenticated as ``<id>`` publishes there,
and that a device can *subscribe* only to what it may read. Mosquitto 2.0's
``acl_file`` cannot do the second: it grants every SUBSCRIBE (``security_default.c``:
"FIXME - implement ACL subscription strings") and filters at delivery, so a device
could join the control plane's shared subscription (``$share/<group>/fleet/+/up/#``)
and the broker would hand it every other device's message, then drop it under its
read ACL: lost, though the sender got its PUBACK. The secured broker therefore runs
Mosquitto's **dynamic-security plugin** (shipped with Mosquitto ≥ 2.0), whose roles
carry ``subscribePattern`` ACLs that are checked at SUBSCRIBE: anything else is
refused with reason code 0x87 (Not authorized).

What the broker is told (``render_dynsec_config``, loaded when it starts):

* default access: nothing to publish, receive or subscribe; unsubscribe allowed;
* role ``edgefleet-control``: ``fleet/#`` to publish, receive and subscribe, and
  ``$share/+/fleet/#`` (any group name) to subscribe; every control-plane user has it;
* role ``edgefleet-admin``: ``$CONTROL/dynamic-security/#`` only; user ``cp-admin``;
* one role per device, named by its id: publish ``fleet/<id>/up/#``, receive and
  subscribe ``fleet/<id>/down/#`` and the broadcast ``fleet/all/down/#``. The plugin
  in 2.0 has no ``%u`` substitution, hence a role per device. Each device client is
  pinned to its own client id, so even on a listener without
  ``use_username_as_clientid`` a device cannot take over another's session.

A revoked device is simply absent: no client, no role, so every publish and
subscribe it tries is refused. While the broker runs, the plugin reads no file: the
control plane changes it through its MQTT API (``$CONTROL/dynamic-security/v1``),
as ``cp-admin`` (``DynsecAdmin``): on a password broker through its one listener, on
a TLS broker through a second, loopback-only listener that takes passwords (no
device has one there). ``deleteClient`` also makes
the broker close that client's live connection, which is how a revocation cuts a
live session, TLS or not.

Files in the auth directory (written atomically, 0600, owned by whoever owns the
directory: the broker's user when the control plane runs as root):

``control-plane.passwd``      the control plane's own password users (``cp-...``)
``control-plane.identities``  control-plane names that authenticate by certificate
``passwd``                    ``$7$`` hashes of control users, ``cp-admin`` and
                              password devices (the record a restart renders from)
``devices``                   enrolled, unrevoked device ids, one a line
``admin.json``                where ``cp-admin`` connects (the password listener, or
                              the TLS broker's loopback admin listener) and its
                              password
``broker.pid``                the running broker's pid (SIGHUP re-reads the CRL)
``ca.crt`` ``server.crt`` ``server.key`` ``crl.pem``
                              TLS mode: the broker's copies of what it must read,
                              so the PKI directory stays the control plane's alone

With TLS (``TlsListener``, see docs/tls.md) devices authenticate by client
certificate: ``use_identity_as_username`` makes the certificate's CN (the device id)
the username the roles are looked up by, ``use_username_as_clientid`` ties the client
id to it, and the CRL is checked on every handshake (SIGHUP re-reads it).

Password hashes use Mosquitto's ``$7$`` format (PBKDF2-HMAC-SHA512, 12-byte salt),
which is also what the plugin stores (salt, hash and iterations as separate fields),
so a hash moves from one to the other unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import queue
import re
import secrets
import signal
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet import topics
from edgefleet.control_plane.core.errors import BrokerError
from edgefleet.errors import TransportError
from edgefleet.fileio import atomic_write
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink

logger = logging.getLogger(__name__)

PBKDF2_ITERATIONS = 1000  # passwords are 256-bit random tokens; the hash only hides them
SALT_BYTES = 12  # what mosquitto_passwd and the dynamic-security plugin use
CONTROL_USER_RE = re.compile(r"^cp-[A-Za-z0-9_-]{1,60}$")
ADMIN_USER = "cp-admin"
CONTROL_ROLE = "edgefleet-control"
ADMIN_ROLE = "edgefleet-admin"
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE_TOPIC = f"{DYNSEC_TOPIC}/response"
ADMIN_TIMEOUT_S = 10.0
_HASH_RE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
# Errors a delete may answer with when there was nothing to delete.
_ABSENT = ("Client not found", "Role not found")
# On a password listener cp-admin's client id is its username: one session at a time.
_ADMIN_LOCK = threading.Lock()


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


# -- files ---------------------------------------------------------------------


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


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``password`` in Mosquitto's ``$7$`` PBKDF2-SHA512 format (as ``mosquitto_passwd``)."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${iterations}${salt_b64}${digest_b64}"


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches a ``$7$`` hash (what the broker checks on connect)."""
    match = _HASH_RE.fullmatch(encoded)
    if match is None:
        return False
    iterations, salt, expected = match.groups()
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt), int(iterations)
    )
    return hmac.compare_digest(digest, base64.b64decode(expected))


def new_password() -> str:
    """A random broker password (256 bits, URL-safe, no ``:`` so the file stays parseable)."""
    return secrets.token_urlsafe(32)


def render_password_file(entries: Mapping[str, str]) -> str:
    """``username:hash`` lines, sorted so a rewrite with the same users is byte-identical."""
    for username, encoded in entries.items():
        if ":" in username or "\n" in username or not _HASH_RE.fullmatch(encoded):
            raise ValueError(f"refusing a malformed password entry for {username!r}")
    return "".join(f"{user}:{entries[user]}\n" for user in sorted(entries))


def read_password_file(path: Path) -> dict[str, str]:
    """``username -> hash`` from a Mosquitto password file (missing file: empty)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    entries: dict[str, str] = {}
    for line in text.splitlines():
        user, sep, encoded = line.strip().partition(":")
        if sep and user:
            entries[user] = encoded
    return entries


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def add_control_user(files: BrokerAuthFiles, username: str) -> str:
    """Create (or reset) a control-plane broker user; returns its password, shown once.

    Takes effect when the broker next starts (``render_dynsec_config``).
    """
    if not CONTROL_USER_RE.fullmatch(username) or username == ADMIN_USER:
        raise ValueError(f"control-plane users must be cp- names, got {username!r}")
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
    if not CONTROL_USER_RE.fullmatch(name) or name == ADMIN_USER:
        raise ValueError(f"control-plane users must be cp- names, got {name!r}")
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
        if not topics.is_device_id(device_id):
            raise ValueError(f"not a device id: {device_id!r}")
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


# -- the dynamic-security plugin -------------------------------------------------


def _acl(acltype: str, topic: str, *, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": allow}


def broadcast_filter() -> str:
    """What every device may read: ``fleet/all/down/#``."""
    return f"{topics.ROOT}/{topics.BROADCAST}/down/#"


def device_role(device_id: str) -> dict[str, Any]:
    """One device's role: its own up subtree to publish, its down subtree and the
    broadcast to subscribe and receive; nothing else (default deny)."""
    own_down = topics.device_down_filter(device_id)
    return {
        "rolename": device_id,
        "acls": [
            _acl("publishClientSend", f"{topics.ROOT}/{device_id}/up/#"),
            _acl("publishClientReceive", own_down),
            _acl("publishClientReceive", broadcast_filter()),
            _acl("subscribePattern", own_down),
            _acl("subscribePattern", broadcast_filter()),
        ],
    }


def control_role() -> dict[str, Any]:
    """The control plane: all of ``fleet/``, and shared subscriptions in any group."""
    everything = f"{topics.ROOT}/#"
    return {
        "rolename": CONTROL_ROLE,
        "acls": [
            _acl("publishClientSend", everything),
            _acl("publishClientReceive", everything),
            _acl("subscribePattern", everything),
            _acl("subscribePattern", f"$share/+/{everything}"),
        ],
    }


def admin_role() -> dict[str, Any]:
    """``cp-admin``: the plugin's own API, nothing of the fleet."""
    control = "$CONTROL/dynamic-security/#"
    return {
        "rolename": ADMIN_ROLE,
        "acls": [
            _acl("publishClientSend", control),
            _acl("publishClientReceive", control),
            _acl("subscribePattern", control),
        ],
    }


def _password_fields(encoded: str) -> dict[str, Any]:
    """A ``$7$`` hash as the plugin stores it."""
    match = _HASH_RE.fullmatch(encoded)
    if match is None:
        raise ValueError("not a $7$ password hash")
    iterations, salt, digest = match.groups()
    return {"password": digest, "salt": salt, "iterations": int(iterations)}


def device_client(device_id: str, password_hash: str = "") -> dict[str, Any]:
    client: dict[str, Any] = {
        "username": device_id,
        "clientid": device_id,
        "roles": [{"rolename": device_id}],
    }
    if password_hash:
        client.update(_password_fields(password_hash))
    return client


def render_dynsec_config(files: BrokerAuthFiles) -> bytes:
    """The plugin's configuration from the auth files: what the broker starts with."""
    hashes = read_password_file(files.password_file)
    control_hashes = read_password_file(files.control_file)
    clients: list[dict[str, Any]] = []
    for user in sorted({*control_hashes, *read_identities(files)}):
        if not CONTROL_USER_RE.fullmatch(user) or user == ADMIN_USER:
            raise ValueError(f"control-plane users must be cp- names, got {user!r}")
        client: dict[str, Any] = {"username": user, "roles": [{"rolename": CONTROL_ROLE}]}
        if user in control_hashes:
            client.update(_password_fields(control_hashes[user]))
        clients.append(client)
    if ADMIN_USER in hashes:
        clients.append(
            {
                "username": ADMIN_USER,
                "roles": [{"rolename": ADMIN_ROLE}],
                **_password_fields(hashes[ADMIN_USER]),
            }
        )
    devices = read_devices(files)
    for device_id in devices:
        if not topics.is_device_id(device_id):
            raise ValueError(f"not a device id: {device_id!r}")
        clients.append(device_client(device_id, hashes.get(device_id, "")))
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": [control_role(), admin_role(), *(device_role(d) for d in devices)],
    }
    return json.dumps(config, indent=1).encode()


class DynsecAdmin:
    """Commands to a running broker's dynamic-security plugin, as ``cp-admin``.

    One short MQTT session per call on the loopback admin listener: subscribe to the
    response topic, publish the commands with correlation data, wait for the answer.
    """

    def __init__(self, admin: Admin, *, timeout: float = ADMIN_TIMEOUT_S):
        self.admin = admin
        self.timeout = timeout

    def run(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; their responses, in order.

        ``BrokerError`` when the broker cannot be reached or does not answer in time.
        """
        tag = secrets.token_hex(8)
        tagged = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
        answers: queue.Queue[list[dict[str, Any]]] = queue.Queue()

        def on_response(message: Incoming) -> None:
            try:
                responses = json.loads(message.payload)["responses"]
            except (ValueError, KeyError, TypeError):
                return
            mine = [r for r in responses if str(r.get("correlationData", "")).startswith(tag)]
            if mine:
                answers.put(mine)

        link = MqttLink(
            client_id=f"{ADMIN_USER}-{secrets.token_hex(4)}",
            broker=BrokerAddress(self.admin.host, self.admin.port),
            username=self.admin.username,
            password=self.admin.password,
            clean_start=True,
            session_expiry=0,
        )
        link.subscribe(DYNSEC_RESPONSE_TOPIC, on_response)
        with _ADMIN_LOCK:
            return self._exchange(link, tagged, answers)

    def _exchange(
        self,
        link: MqttLink,
        tagged: list[dict[str, Any]],
        answers: queue.Queue[list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        link.start()
        try:
            if not link.wait_subscribed(self.timeout):
                raise BrokerError(f"admin listener on port {self.admin.port} refused cp-admin")
            link.publish(DYNSEC_TOPIC, json.dumps({"commands": tagged}).encode(), wait=self.timeout)
            try:
                return answers.get(timeout=self.timeout)
            except queue.Empty:
                raise BrokerError("the dynamic-security plugin did not answer") from None
        except TransportError as e:
            raise BrokerError(f"cannot send commands to the broker: {e}") from e
        finally:
            link.stop()

    def put_device(self, device_id: str, *, password: str | None = None) -> None:
        """Create (or re-create) ``device_id``'s client and role; ``password`` or a certificate."""
        client: dict[str, Any] = {"command": "createClient", **device_client(device_id)}
        if password is not None:
            client["password"] = password
        self._check(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_id},
                {"command": "createRole", **device_role(device_id)},
                client,
            ]
        )

    def remove_device(self, device_id: str) -> None:
        """Delete ``device_id``'s client (the broker closes its live connection) and role."""
        self._check(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_id},
            ]
        )

    def _check(self, commands: list[dict[str, Any]]) -> None:
        for command, response in zip(commands, self.run(commands), strict=True):
            error = response.get("error")
            if error and not (command["command"].startswith("delete") and error in _ABSENT):
                raise BrokerError(f"broker refused {command['command']}: {error}")


def update_broker_device(
    files: BrokerAuthFiles, device_id: str, *, revoked: bool = False, password: str | None = None
) -> bool:
    """Apply one enrolment or revocation to the running broker; False when it has no admin
    listener known here (a broker managed elsewhere: it learns at its next start)."""
    if not topics.is_device_id(device_id):
        raise ValueError(f"not a device id: {device_id!r}")
    admin = read_admin(files)
    if admin is None:
        logger.warning(
            "no broker admin listener; the broker applies device_id=%s at its next start",
            device_id,
        )
        return False
    client = DynsecAdmin(admin)
    if revoked:
        client.remove_device(device_id)
        logger.warning("broker client removed, live session closed device_id=%s", device_id)
    else:
        client.put_device(device_id, password=password)
        logger.info("broker client created device_id=%s", device_id)
    return True


# -- mosquitto.conf --------------------------------------------------------------


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
