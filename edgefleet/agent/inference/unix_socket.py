"""The local endpoint's Unix domain socket listener, for applications on the device.

Why: a caller on the same board skips the TCP/IP stack (loopback still runs it), and
who may call is decided by the socket file's owner, group and mode (0660: the agent's
user and group) rather than by anyone who can reach a port. It serves the very same
request handler, hence the same routes, as the TCP listener.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import socketserver
import stat
from http.server import BaseHTTPRequestHandler
from pathlib import Path

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o660


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """HTTP/1.1 over a Unix stream socket at ``path``, one thread per connection.

    A stale socket file (a previous agent's) is replaced; any other file at ``path`` is
    left alone and the listener refuses to start (``FileExistsError``). The file gets
    mode 0660 before the socket listens, so no caller ever sees a wider one.
    """

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: Path, handler: type[BaseHTTPRequestHandler]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
            else:
                raise FileExistsError(f"{path} exists and is not a socket: not replacing it")
        except FileNotFoundError:
            pass
        super().__init__(str(path), handler)

    def server_bind(self) -> None:
        super().server_bind()
        os.chmod(self.path, SOCKET_MODE)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        connection, _ = self.socket.accept()
        # http.server logs and formats client_address as (host, port).
        return connection, ("unix", 0)

    def server_close(self) -> None:
        super().server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        logger.debug("unix listener closed path=%s", self.path)
