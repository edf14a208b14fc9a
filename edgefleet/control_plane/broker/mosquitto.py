"""Starts a private Mosquitto broker with the settings edgefleet needs.

Used by ``edgefleet up``, ``edgefleet demo`` and the tests. The configuration
fixes the two measured pitfalls of Mosquitto 2.0's defaults: ``max_queued_messages``
(1000 by default) silently drops QoS 1 messages to slow or offline subscribers, and
Nagle's algorithm adds ~40 ms to every request/response block. Persistence is saved
every few seconds rather than every 30 minutes so a crash keeps queued messages.

The broker never runs as root when it can help it: started by root, it runs as the
``mosquitto`` user, which owns the broker's directory (its configuration, the
dynamic-security file, ``mosquitto.db``, ``mosquitto.log``, and with TLS its own
copies of its certificate, key, CA and CRL). Mosquitto drops privileges right after
reading its configuration, so everything else it opens must be that user's. When
there is no ``mosquitto`` user, or it cannot reach the directory (a parent it may not
enter, e.g. under ``/root``), the broker runs as root and a warning says why. Its
files are created under umask 077; its stderr goes to ``mosquitto.stderr.log`` (only
what it writes before its log file is open), never to a pipe nobody reads.

Without ``security`` the broker is anonymous (the quickstart, the demo, most tests).
With a ``BrokerAuthFiles`` it requires a username and password or, with ``tls`` as
well, a client certificate, and authorises every publish and subscribe through the
dynamic-security plugin (see ``edgefleet.control_plane.broker.security``), whose clients and
roles the control plane changes while it runs as ``cp-admin``: on the password
listener, or with TLS on a second, loopback-only listener that takes passwords.

Why this module stays (just) over 400 lines: it is the one place that knows how to
run the broker process (find it, hand it its directory, render its configuration,
start, watch and stop it); ACLs and credentials are already in
``edgefleet.control_plane.broker.security``.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

from edgefleet.control_plane.broker.security import (
    BrokerAuthFiles,
    TlsListener,
    add_control_identity,
    ensure_admin,
    install_tls,
    render_dynsec_config,
    render_password_listener,
    render_security_config,
    render_tls_listener,
    write_auth_files,
    write_private,
)
from edgefleet.control_plane.core.errors import BrokerError
from edgefleet.control_plane.core.netutil import free_port, port_taken, wait_for_port
from edgefleet.control_plane.trust.pki import (
    CertificateAuthority,
    PkiFiles,
    certificate_is_current,
    ensure_server_files,
    write_control_files,
    write_crl,
)
from edgefleet.mqtt import BrokerAddress

logger = logging.getLogger(__name__)

MAX_PACKET_SIZE = 1024 * 1024  # bytes; fetch chunks are at most 256 KiB
AUTOSAVE_INTERVAL_S = 2  # persistence is written at most this long after a change
BROKER_USER = "mosquitto"
DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
PLUGIN_DIRS = ("/usr/lib/*/", "/usr/lib/", "/usr/local/lib/", "/usr/lib/*/mosquitto/")


def find_mosquitto() -> str:
    """Path of the mosquitto binary (PATH, then /usr/sbin); ``BrokerError`` if absent."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError(
            "mosquitto is not installed: run `make setup` (apt-get install mosquitto)"
        )
    return found


def find_dynsec_plugin() -> Path:
    """Mosquitto's dynamic-security plugin (shipped with the broker since 2.0)."""
    for pattern in PLUGIN_DIRS:
        found = sorted(glob.glob(pattern + DYNSEC_PLUGIN))
        if found:
            return Path(found[0])
    raise BrokerError(
        f"{DYNSEC_PLUGIN} not found: a secured broker needs Mosquitto >= 2.0 with its "
        "dynamic-security plugin"
    )


def _can_enter(path: Path, user: pwd.struct_passwd) -> bool:
    info = path.stat()
    if user.pw_uid == 0:
        return True
    if info.st_uid == user.pw_uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in os.getgrouplist(user.pw_name, user.pw_gid):
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def broker_user(data_dir: Path, preferred: str = BROKER_USER) -> str | None:
    """The user the broker runs as: None when not started by root (it stays the
    starter), ``preferred`` when it exists and can reach ``data_dir``, else root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(preferred)
    except KeyError:
        logger.warning(
            "no %r user: the broker runs as root; create one (useradd --system %s) to "
            "run it unprivileged",
            preferred,
            preferred,
        )
        return "root"
    for parent in Path(data_dir).resolve().parents:
        if not _can_enter(parent, entry):
            logger.warning(
                "user %r cannot enter %s: the broker runs as root; give the directory "
                "o+x (0711) or choose a data directory it can reach",
                preferred,
                parent,
            )
            return "root"
    return preferred


def let_broker_enter(directory: Path) -> None:
    """Make ``directory`` (the control plane's own, holding the broker's) 0711 when
    started by root, so an unprivileged broker can pass through it to its own
    subdirectory; it can neither list nor read anything else there (0700/0600)."""
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(directory, 0o711)


def hand_over(paths: Sequence[Path], user: str) -> None:
    """Give ``paths`` (recursively) to ``user`` and its group; directories 0700."""
    entry = pwd.getpwnam(user)
    for top in paths:
        for root, dirs, names in os.walk(top):
            os.lchown(root, entry.pw_uid, entry.pw_gid)
            os.chmod(root, 0o700)
            for name in [*dirs, *names]:
                path = os.path.join(root, name)
                if not os.path.isdir(path) or os.path.islink(path):
                    os.lchown(path, entry.pw_uid, entry.pw_gid)


def render_config(
    *,
    port: int,
    data_dir: Path,
    persistence: bool = True,
    security: BrokerAuthFiles | None = None,
    tls: TlsListener | None = None,
    bind: str = "127.0.0.1",
    admin_port: int | None = None,
    user: str | None = None,
    plugin: Path | None = None,
) -> str:
    """The mosquitto.conf edgefleet runs with (anonymous unless ``security`` is given).

    ``tls`` (which needs ``security``) replaces the password listener with a TLS one
    that requires client certificates; ``admin_port`` adds the loopback listener the
    control plane changes the dynamic-security plugin through; ``user`` is who the
    broker runs as when started by root.
    """
    if security is None:
        if tls is not None:
            raise ValueError("a TLS broker needs its ACL: pass security as well")
        listener, auth = [f"listener {port} {bind}"], ["allow_anonymous true"]
    else:
        if tls is None:
            listener = render_password_listener(port=port, bind=bind)
        else:
            listener = render_tls_listener(port=port, bind=bind, tls=tls)
        auth = render_security_config(
            plugin=plugin or find_dynsec_plugin(),
            dynsec_file=dynsec_path(data_dir),
            admin_port=admin_port,
        )
    lines = [
        *listener,
        *auth,
        *([f"user {user}"] if user else []),
        "max_queued_messages 0",
        "max_inflight_messages 100",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "set_tcp_nodelay true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {data_dir}/",
        f"autosave_interval {AUTOSAVE_INTERVAL_S}",
        f"log_dest file {data_dir}/mosquitto.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    return "\n".join(lines) + "\n"


def dynsec_path(data_dir: Path) -> Path:
    """Where the broker's dynamic-security plugin keeps its clients and roles."""
    return Path(data_dir) / "dynamic-security.json"


def prepare_tls(
    pki: PkiFiles,
    ca: CertificateAuthority,
    security: BrokerAuthFiles,
    *,
    hosts: Sequence[str],
    control_name: str,
) -> TlsListener:
    """Everything a TLS broker and the control plane's link need from ``ca``.

    Issues (again, when missing, expiring, from another CA or lacking a host) the
    broker's server certificate for ``hosts`` and the control plane's client
    certificate ``control_name``, lets that name act as the control plane, and writes
    an empty CRL if there is none (the database's revocations are applied over it by
    ``services.enrolment.apply_to_broker``). Returns the listener with the broker's
    own copies of the files, in the auth directory.
    """
    ensure_server_files(pki, ca, hosts)
    if not certificate_is_current(pki.client_cert(control_name), ca):
        write_control_files(pki, ca, control_name)
    add_control_identity(security, control_name)
    if not pki.crl.exists():
        write_crl(pki, ca, revoked=())
    return install_tls(
        security,
        TlsListener(
            ca_file=pki.ca_cert,
            cert_file=pki.server_cert,
            key_file=pki.server_key,
            crl_file=pki.crl,
        ),
    )


class MosquittoBroker:
    """One mosquitto process on a loopback port, with its own config and data dir.

    ``stop()`` ends it gracefully (persistence saved), ``kill()`` with SIGKILL, and
    ``start()`` again brings it back on the same port with the same data.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        persistence: bool = True,
        security: BrokerAuthFiles | None = None,
        tls: TlsListener | None = None,
        bind: str = "127.0.0.1",
    ):
        if tls is not None and security is None:
            raise ValueError("a TLS broker needs its ACL: pass security as well")
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persistence = persistence
        self.security = security
        self.tls = tls
        self.bind = bind
        self.admin_port: int | None = None
        self.user: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> BrokerAddress:
        """Where clients on this machine reach it (``mqtts://`` when TLS is on)."""
        return BrokerAddress(self._local_host, self.port, tls=self.tls is not None)

    @property
    def _local_host(self) -> str:
        return "127.0.0.1" if self.bind in ("0.0.0.0", "::", "") else self.bind

    @property
    def url(self) -> str:
        return self.address.url()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def stderr_log(self) -> Path:
        return self.data_dir / "mosquitto.stderr.log"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        if port_taken(self.bind or "0.0.0.0", self.port):
            raise BrokerError(f"port {self.port} on {self.bind} is already in use")
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.user = broker_user(self.data_dir)
        if self.security is not None:
            if not self.security.password_file.exists():
                write_auth_files(self.security, devices={})
            if self.tls is not None:
                # Devices there have certificates, no passwords: cp-admin gets a
                # loopback listener of its own. A password broker takes it as is.
                self.admin_port = self.admin_port or free_port()
            ensure_admin(self.security, host=self._local_host, port=self.admin_port or self.port)
            write_private(dynsec_path(self.data_dir), render_dynsec_config(self.security))
        config = self.data_dir / "mosquitto.conf"
        rendered = render_config(
            port=self.port,
            data_dir=self.data_dir,
            persistence=self.persistence,
            security=self.security,
            tls=self.tls,
            bind=self.bind,
            admin_port=self.admin_port,
            user=self.user,
        )
        write_private(config, rendered.encode())
        fd = os.open(self.stderr_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self.user not in (None, "root"):
            assert self.user is not None
            owned = [self.data_dir]
            if self.security is not None and not self.security.directory.resolve().is_relative_to(
                self.data_dir.resolve()
            ):
                owned.append(self.security.directory)
            hand_over(owned, self.user)
        try:
            self._process = subprocess.Popen(
                [find_mosquitto(), "-c", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=fd,
                umask=0o077,
            )
        finally:
            os.close(fd)
        listening = wait_for_port(self._local_host, self.port, timeout)
        if listening and self.admin_port is not None:
            listening = wait_for_port("127.0.0.1", self.admin_port, timeout)
        if listening and self._process.poll() is not None:
            # Something answers on the port, but not our broker: it could not bind.
            self._close()
            raise BrokerError(
                f"mosquitto exited (port {self.port} already in use?): "
                f"{self._tail() or 'see ' + str(self.data_dir)}"
            )
        if not listening:
            self.kill()
            raise BrokerError(
                f"mosquitto did not listen on port {self.port} within {timeout}s: "
                f"{self._tail() or 'see ' + str(self.data_dir)}"
            )
        if self.security is not None:
            write_private(self.security.pid_file, f"{self._process.pid}\n".encode())
        logger.info(
            "mosquitto started port=%d pid=%d user=%s",
            self.port,
            self._process.pid,
            self.user or "self",
        )

    def _tail(self, lines: int = 10) -> str:
        """The last lines of the broker's stderr and log: why it did not start."""
        found: list[str] = []
        for path in (self.stderr_log, self.log_file):
            with contextlib.suppress(OSError):
                found += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join(found).strip()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its configuration and CRL and re-checks live clients."""
        if self.running and self._process is not None:
            self._process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait: mosquitto saves its persistence file on the way out."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close()

    def kill(self) -> None:
        """SIGKILL: a broker that vanishes without saving anything since its last autosave."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._close()

    def _close(self) -> None:
        if self.security is not None:
            self.security.pid_file.unlink(missing_ok=True)
        self._process = None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
