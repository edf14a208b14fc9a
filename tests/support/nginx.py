"""A real nginx serving a directory on a free loopback port: an HTTP mirror for tests.

Debian's nginx (``nginx-light``, installed by ``scripts/setup.sh`` for the tests) in
the foreground without a master process, so it runs as whoever starts it and
``kill()`` cuts every connection at once, as a crashed mirror or CDN edge would.
Range requests are nginx's own (206 with ``Content-Range``). ``rate`` slows each
response (nginx's ``limit_rate``) so a test can cut one mid-body. Each request is
logged as ``<status> <Range header> <body bytes sent>``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

from edgefleet.control_plane.core.netutil import free_port
from tests.support.polling import wait_until

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format ranges '$status "$http_range" $body_bytes_sent $uri';
    access_log {work}/access.log ranges;
    client_body_temp_path {work}/tmp;
    proxy_temp_path {work}/tmp;
    fastcgi_temp_path {work}/tmp;
    uwsgi_temp_path {work}/tmp;
    scgi_temp_path {work}/tmp;
    types {{ application/json json; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        limit_rate {rate};
        location = /metadata/timestamp.json {{ add_header Cache-Control no-cache; }}
    }}
}}
"""


def nginx_available() -> bool:
    return Path(NGINX).is_file()


class Nginx:
    """``start()`` serves ``root`` at ``url``; ``kill()`` drops it; ``start()`` again
    brings it back on the same port."""

    def __init__(self, root: Path, work: Path, *, rate: int = 0) -> None:
        self.root = Path(root)
        self.work = Path(work)
        self.port = free_port()
        self.rate = rate
        self.process: subprocess.Popen[bytes] | None = None
        (self.work / "tmp").mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.work / "nginx.conf"
        config.write_text(
            CONFIG.format(work=self.work, port=self.port, root=self.root, rate=self.rate)
        )
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.work), "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "stderr.log").open("ab"),
        )
        wait_until(self._listening, f"nginx listening on {self.url}", timeout=20)

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError((self.work / "stderr.log").read_text()[-2000:])
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def requests(self) -> list[tuple[int, str, int, str]]:
        """``(status, Range header, body bytes sent, path)`` per request, oldest first."""
        log = self.work / "access.log"
        rows = []
        for line in log.read_text().splitlines() if log.exists() else []:
            status, rest = line.split(" ", 1)
            quoted, sent, uri = rest.rsplit(" ", 2)
            rows.append((int(status), quoted.strip('"'), int(sent), uri))
        return rows
