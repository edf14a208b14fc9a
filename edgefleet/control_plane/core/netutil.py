"""Small helpers for the processes the control plane starts on this machine."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path

PORT_HOLD_S = 300.0
"""How long a port handed out by ``free_port`` is not handed out again on this machine."""
_RESERVATIONS = Path(tempfile.gettempdir()) / "edgefleet-ports"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it), not handed out by
    ``free_port`` in any process of this machine in the last ``PORT_HOLD_S``.

    The port is free only until someone binds it: between this call and the caller's
    bind, another process asking the OS for a free port may be given the same one.
    A reservation file per port (``O_EXCL``) keeps processes that pick ports this way
    (a control plane starting its broker, agents, parallel test workers) from picking
    each other's.
    """
    port = 0
    for _ in range(64):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if _reserve(port):
            return port
    return port  # every pick was held: the OS's last one is still free right now


def _reserve(port: int) -> bool:
    """Claim ``port`` for ``PORT_HOLD_S``; False when another pick holds it."""
    path = _RESERVATIONS / str(port)
    try:
        _RESERVATIONS.mkdir(mode=0o1777, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - path.stat().st_mtime < PORT_HOLD_S:
                return False
            os.utime(path)  # an old claim: take it over
        except OSError:
            return False
        return True
    except OSError:
        return True  # no place to record claims: the OS's pick alone
    os.close(fd)
    return True


def port_taken(host: str, port: int) -> bool:
    """True when something already listens on ``host:port`` (binding it fails).

    ``SO_REUSEADDR`` as servers set it: a port held only by closing connections
    (``TIME_WAIT``) counts as free, one with a listener as taken.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """True once something accepts TCP connections on ``host:port``, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False
