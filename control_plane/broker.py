"""Starts a private Mosquitto broker with the settings edgefleet needs.

Used by ``edgefleet up``, ``edgefleet demo`` and the tests. The configuration
fixes the two measured pitfalls of Mosquitto 2.0's defaults: ``max_queued_messages``
(1000 by default) silently drops QoS 1 messages to slow or offline subscribers, and
Nagle's algorithm adds ~40 ms to every request/response block. Persistence is saved
every few seconds rather than every 30 minutes so a restart keeps queued messages.

Without ``security`` the broker is anonymous (the quickstart, the demo, most tests).
With a ``BrokerAuthFiles`` it requires a username and password, applies the ACL the
control plane generates (``control_plane.broker_security``) and writes its pid so the
control plane can send it SIGHUP after enrolling or revoking a device. With ``tls``
as well, devices connect over TLS with a client certificate instead of a password
(``mqtts://``), and a second, loopback-only listener lets the control plane end a
revoked device's live session (see ``control_plane.broker_security``).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from control_plane.broker_security import (
    BrokerAuthFiles,
    TlsListener,
    add_control_identity,
    ensure_revoker,
    render_security_config,
    render_tls_listener,
    render_tls_security_config,
    write_auth_files,
)
from control_plane.errors import BrokerError
from control_plane.netutil import free_port, wait_for_port
from control_plane.pki import (
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


def find_mosquitto() -> str:
    """Path of the mosquitto binary (PATH, then /usr/sbin); ``BrokerError`` if absent."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise BrokerError(
            "mosquitto is not installed: run `make setup` (apt-get install mosquitto)"
        )
    return found


def render_config(
    *,
    port: int,
    data_dir: Path,
    persistence: bool = True,
    security: BrokerAuthFiles | None = None,
    tls: TlsListener | None = None,
    bind: str = "127.0.0.1",
    admin_port: int | None = None,
) -> str:
    """The mosquitto.conf edgefleet runs with (anonymous unless ``security`` is given).

    ``tls`` (which needs ``security``) replaces the password listener with a TLS one
    that requires client certificates; ``admin_port`` adds the loopback listener that
    ends revoked devices' sessions.
    """
    if security is None:
        if tls is not None:
            raise ValueError("a TLS broker needs its ACL: pass security as well")
        listener, auth = [f"listener {port} {bind}"], ["allow_anonymous true"]
    elif tls is None:
        listener, auth = [f"listener {port} {bind}"], render_security_config(security)
    else:
        listener = render_tls_listener(port=port, bind=bind, tls=tls)
        auth = render_tls_security_config(security, admin_port=admin_port)
    if security is not None and os.geteuid() == 0:
        # Started as root, mosquitto drops to the ``mosquitto`` user, which cannot read
        # auth files in a private (0700) data dir: keep the starter's identity instead.
        auth.append("user root")
    lines = [
        *listener,
        *auth,
        "max_queued_messages 0",
        "max_inflight_messages 100",
        f"max_packet_size {MAX_PACKET_SIZE}",
        "set_tcp_nodelay true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {data_dir}/",
        "autosave_interval 2",
        f"log_dest file {data_dir}/mosquitto.log",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
    ]
    return "\n".join(lines) + "\n"


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
    certificate ``control_name``, lets that name act as the control plane in the ACL,
    and writes an empty CRL if there is none (the database's revocations are applied
    over it by ``services.enrolment.apply_to_broker``).
    """
    ensure_server_files(pki, ca, hosts)
    if not certificate_is_current(pki.client_cert(control_name), ca):
        write_control_files(pki, ca, control_name)
    add_control_identity(security, control_name)
    if not pki.crl.exists():
        write_crl(pki, ca, revoked=())
    return TlsListener(
        ca_file=pki.ca_cert, cert_file=pki.server_cert, key_file=pki.server_key, crl_file=pki.crl
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

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "mosquitto.conf"
        if self.security is not None and not self.security.password_file.exists():
            write_auth_files(self.security, devices={})
        if self.security is not None and self.tls is not None:
            self.admin_port = self.admin_port or free_port()
            ensure_revoker(self.security, port=self.admin_port)
        config.write_text(
            render_config(
                port=self.port,
                data_dir=self.data_dir,
                persistence=self.persistence,
                security=self.security,
                tls=self.tls,
                bind=self.bind,
                admin_port=self.admin_port,
            )
        )
        self._process = subprocess.Popen(
            [find_mosquitto(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        listening = wait_for_port(self._local_host, self.port, timeout)
        if listening and self.admin_port is not None:
            listening = wait_for_port("127.0.0.1", self.admin_port, timeout)
        if not listening:
            stderr = b""
            if self._process.poll() is not None and self._process.stderr:
                stderr = self._process.stderr.read()
            self.kill()
            raise BrokerError(
                f"mosquitto did not listen on port {self.port} within {timeout}s: "
                f"{stderr.decode(errors='replace').strip() or 'see ' + str(self.data_dir)}"
            )
        if self.security is not None:
            self.security.pid_file.write_text(f"{self._process.pid}\n")
        logger.info("mosquitto started port=%d pid=%d", self.port, self._process.pid)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password file and ACL and re-checks live clients."""
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
        if self._process is not None and self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
