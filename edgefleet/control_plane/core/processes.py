"""Child processes started by ``edgefleet up`` and ``edgefleet demo``, stopped together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


class ProcessGroup:
    """Starts Python module processes with logs to files; ``stop_all`` ends them in reverse."""

    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start_module(
        self, name: str, module: str, args: list[str], log_path: Path
    ) -> subprocess.Popen[bytes]:
        """Run ``python -m module *args`` with stdout and stderr going to ``log_path``.

        The log (0600: it names devices and what they sent) is a file, never a pipe
        that would block the child once nobody reads it.
        """
        log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            os.close(log)
        self._children.append((name, process, log_path))
        logger.info("started name=%s pid=%d", name, process.pid)
        return process

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` naming the first child that exited, with its log's tail."""
        for name, process, log_path in self._children:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(
                    f"{name} exited with code {process.returncode}; last log lines:\n"
                    + "\n".join(tail)
                )

    def stop_all(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (newest first), then SIGKILL what is left after ``timeout``."""
        for _name, process, _log in reversed(self._children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name, process, _log in reversed(self._children):
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("child did not stop in time, killing name=%s", name)
                process.kill()
                process.wait()
        self._children.clear()
