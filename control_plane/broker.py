"""Starts a private Mosquitto broker with the settings edgefleet needs.

Used by ``edgefleet up``, ``edgefleet demo`` and the tests. The configuration
fixes the two measured pitfalls of Mosquitto 2.0's defaults: ``max_queued_messages``
(1000 by default) silently drops QoS 1 messages to slow or offline subscribers, and
Nagle's algorithm adds ~40 ms to every request/response block. Persistence is saved
every few seconds rather than every 30 minutes so a restart keeps queued messages.

Without ``security`` the broker is anonymous (the quickstart, the demo, most tests).
With a ``BrokerAuthFiles`` it requires a username and password, applies the ACL the
control plane generates (``control_plane.broker_security``) and writes its pid so the
control plane can send it SIGHUP after enrolling or revoking a device.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from pathlib import Path

from control_plane.broker_security import BrokerAuthFiles, render_security_config, write_auth_files
from control_plane.errors import BrokerError
from control_plane.netutil import free_port, wait_for_port
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
) -> str:
    """The mosquitto.conf edgefleet runs with (anonymous unless ``security`` is given)."""
    auth = ["allow_anonymous true"] if security is None else render_security_config(security)
    if security is not None and os.geteuid() == 0:
        # Started as root, mosquitto drops to the ``mosquitto`` user, which cannot read
        # auth files in a private (0700) data dir: keep the starter's identity instead.
        auth.append("user root")
    lines = [
        f"listener {port} 127.0.0.1",
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
    ):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.persistence = persistence
        self.security = security
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> BrokerAddress:
        return BrokerAddress("127.0.0.1", self.port)

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
        config.write_text(
            render_config(
                port=self.port,
                data_dir=self.data_dir,
                persistence=self.persistence,
                security=self.security,
            )
        )
        self._process = subprocess.Popen(
            [find_mosquitto(), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if not wait_for_port("127.0.0.1", self.port, timeout):
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
