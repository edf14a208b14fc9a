"""Where an offered bundle's TUF verification runs: a short-lived child process, or here.

``ProcessVerifier`` (what the daemon uses) starts ``python -m
edgefleet.agent.verification.verify_worker``
for each offer. The child refreshes the signed metadata, finds the target and, when
told to go on, downloads and checks it; it has no network of its own and asks this
process for every file over a pipe, which this process fetches over MQTT
(resuming across broker outages, ``ResumingTransport``). Why a child: python-tuf
and ``cryptography`` cost the agent about 12 MiB of resident memory that could
never be given back once imported, for work done a few times a month, and the
parsing of untrusted metadata happens in a process that exits afterwards.

``InProcessVerifier`` runs the same code (``edgefleet.agent.verification.tuf_client``) in the
calling
thread: for the fleet simulator's thousand devices per process, and for tests.

Either way the installer sees one interface::

    with verifier.open(offer.target) as signed:   # fresh metadata, target found
        ...check signed.length and signed.custom...
        path = signed.download()                  # length and hashes checked

Pipe protocol (child's stdout -> parent: one JSON object per line; parent ->
child's stdin: frames of a kind byte and a 4-byte big-endian length)::

    child  {"op": "fetch", "path", "max_length"}  parent  D* then E (or X: an error)
    child  {"op": "target", "name", "length", "custom"}   parent  G (go on) or S (stop)
    child  {"op": "done", "path"}  or  {"op": "error", "kind", ...}
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from edgefleet.agent.errors import InstallError, TransferError, VerificationError
from edgefleet.agent.verification.transport import SignedBundle, Transport

logger = logging.getLogger(__name__)

FRAME = struct.Struct(">cI")
DATA, END, FAILED, GO, STOP = b"D", b"E", b"X", b"G", b"S"
SILENCE_TIMEOUT_S = 300.0
"""Longest the child may go without a word; it only computes between its requests."""
EXIT_TIMEOUT_S = 10.0


# -- the transport, resumed across broker outages ----------------------------------------


class ResumingTransport:
    """Waits out broker outages: a broken transfer is picked up where it broke.

    A ``TransferError`` without a status (no answer, broker gone) waits up to
    ``wait_s`` for the link and streams the file again, handing on only bytes not
    yet given (a target's ``.part`` file makes the repeat local). A status (the
    repository refused) or ``attempts`` spent ends it.

    Args:
        transport: the transport resumed (the MQTT fetcher).
        link_ready: waits up to the given seconds for the broker link; True once it
            is up.
        attempts: how many times a file is streamed again after the first.
        wait_s: seconds each attempt waits for the link.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        link_ready: Callable[[float], bool],
        attempts: int,
        wait_s: float,
    ) -> None:
        self.transport = transport
        self.link_ready = link_ready
        self.attempts = attempts
        self.wait_s = wait_s

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        """``transport.stream``, picked up again after a broken transfer.

        Raises:
            TransferError: the repository refused the file, the link did not come
                back within ``wait_s``, or ``attempts`` were spent.
        """
        given = 0
        for attempt in range(self.attempts + 1):
            try:
                position = 0
                for chunk in self.transport.stream(path, max_length):
                    end = position + len(chunk)
                    if end > given:
                        yield chunk[max(0, given - position) :]
                        given = end
                    position = end
                return
            except TransferError as e:
                if e.status is not None or attempt >= self.attempts:
                    raise
                logger.warning(
                    "transfer interrupted, waiting for the broker path=%s attempt=%d reason=%s",
                    path,
                    attempt + 1,
                    e,
                )
                if not self.link_ready(self.wait_s):
                    raise

    def discard_parts(self) -> None:
        """Forget the transport's partial downloads (one failed its hash check)."""
        _discard_parts(self.transport)


def _discard_parts(transport: Transport) -> None:
    discard = getattr(transport, "discard_parts", None)
    if callable(discard):
        discard()


# -- in this process ------------------------------------------------------------------------


class InProcessVerifier:
    """Runs ``edgefleet.agent.verification.tuf_client`` in the calling thread (imports python-tuf
    on first use)."""

    def __init__(self, data_dir: Path, transport: Transport) -> None:
        self.data_dir = Path(data_dir)
        self.transport = transport

    @contextlib.contextmanager
    def open(self, target: str) -> Iterator[SignedBundle]:
        """Refresh the signed metadata and yield ``target`` as it describes it.

        Raises:
            VerificationError: TUF refused the metadata or the bundle's bytes (the
                partial downloads are discarded then).
            TransferError: a repository file could not be fetched.
            InstallError: the target is not in the signed metadata, or the device
                clock is before the time floor.
        """
        from edgefleet.agent.verification.tuf_client import TargetVerifier

        try:
            yield TargetVerifier(self.data_dir, self.transport).find(target)
        except VerificationError:
            _discard_parts(self.transport)  # never resume bytes that failed their check
            raise


# -- in a child process -----------------------------------------------------------------------


def _write_frame(stream: IO[bytes], kind: bytes, payload: bytes = b"") -> None:
    stream.write(FRAME.pack(kind, len(payload)))
    if payload:
        stream.write(payload)


def read_frame(stream: IO[bytes]) -> tuple[bytes, bytes]:
    """(kind, payload); ``EOFError`` when the other side is gone."""
    header = stream.read(FRAME.size)
    if len(header) < FRAME.size:
        raise EOFError("verifier pipe closed")
    kind, length = FRAME.unpack(header)
    payload = stream.read(length) if length else b""
    if len(payload) < length:
        raise EOFError("verifier pipe closed mid-frame")
    return kind, payload


class ProcessVerifier:
    """Runs each verification in ``python -m edgefleet.agent.verification.verify_worker``, serving
    its fetches.

    Args:
        data_dir: the agent's data dir, where the child keeps TUF's files.
        transport: where this process fetches the files the child asks for.
        python: the interpreter the child runs in.
        silence_timeout_s: how long the child may go without a word before it is
            taken as hung and stopped.
    """

    def __init__(
        self,
        data_dir: Path,
        transport: Transport,
        *,
        python: str = sys.executable,
        silence_timeout_s: float = SILENCE_TIMEOUT_S,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.transport = transport
        self.python = python
        self.silence_timeout_s = silence_timeout_s

    @contextlib.contextmanager
    def open(self, target: str) -> Iterator[SignedBundle]:
        """Start a child for ``target``, yield the target once it is found; stop it after.

        The child downloads only when the caller calls ``download`` inside the block.

        Raises:
            VerificationError: TUF refused the metadata or the bundle's bytes (the
                partial downloads are discarded then).
            TransferError: a repository file could not be fetched.
            InstallError: the target is not in the signed metadata, or the device
                clock is before the time floor;
                or the child went silent, exited or sent nonsense.
        """
        job = {
            "data_dir": str(self.data_dir),
            "target": target,
            "log_level": logging.getLogger().getEffectiveLevel(),
        }
        child = _Child(
            subprocess.Popen(
                [self.python, "-m", "edgefleet.agent.verification.verify_worker", json.dumps(job)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            ),
            self.transport,
            self.silence_timeout_s,
        )
        try:
            message = child.serve_until("target")
            yield SignedBundle(
                str(message["name"]), int(message["length"]), dict(message["custom"]), child.go
            )
        except VerificationError:
            _discard_parts(self.transport)
            raise
        finally:
            child.close()


class _Child:
    """One running verify_worker: its requests served until it says what we wait for."""

    def __init__(
        self, process: subprocess.Popen[bytes], transport: Transport, silence_timeout_s: float
    ) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.stdin: IO[bytes] = process.stdin
        self.transport = transport
        self.silence_timeout_s = silence_timeout_s
        self._lines: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        threading.Thread(
            target=self._read_lines, args=(process.stdout,), name="verifier-out", daemon=True
        ).start()

    def _read_lines(self, stdout: IO[bytes]) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stdout:
                self._lines.put(line)
        self._lines.put(None)

    def go(self) -> Path:
        self._send(GO)
        message = self.serve_until("done")
        return Path(str(message["path"]))

    def serve_until(self, op: str) -> dict[str, Any]:
        """Serve fetches until the child sends ``op``; its errors are raised here."""
        while True:
            message = self._next_message()
            kind = message.get("op")
            if kind == op:
                return message
            if kind == "fetch":
                self._serve_fetch(str(message.get("path")), int(message.get("max_length", 0)))
            elif kind == "error":
                raise _child_error(message)
            else:
                raise InstallError(f"verifier sent an unexpected message: {kind!r}")

    def _next_message(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=self.silence_timeout_s)
        except queue.Empty:
            raise InstallError(
                f"verifier process silent for {self.silence_timeout_s:g} s; stopped"
            ) from None
        if line is None:
            code = self.process.wait()
            raise InstallError(f"verifier process exited with code {code} (see the agent log)")
        try:
            message = json.loads(line)
        except ValueError as e:
            raise InstallError(f"verifier sent a malformed message: {e}") from e
        if not isinstance(message, dict):
            raise InstallError("verifier sent a malformed message")
        return message

    def _serve_fetch(self, path: str, max_length: int) -> None:
        try:
            for chunk in self.transport.stream(path, max_length):
                self._send(DATA, chunk)
        except TransferError as e:
            self._send(FAILED, json.dumps({"reason": e.reason, "status": e.status}).encode())
            return
        self._send(END)

    def _send(self, kind: bytes, payload: bytes = b"") -> None:
        try:
            _write_frame(self.stdin, kind, payload)
            self.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            code = self.process.poll()
            raise InstallError(f"verifier process gone (exit code {code})") from e

    def close(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError, InstallError):
                self._send(STOP)
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()
        # A child told to stop, or whose stdin closed, exits at once; one that does not
        # is killed. A timer rather than ``wait(timeout)``, whose polling sleeps fail
        # under a faked clock (libfaketime, as the time-floor attack test uses).
        watchdog = threading.Timer(EXIT_TIMEOUT_S, self.process.kill)
        watchdog.start()
        try:
            self.process.wait()
        finally:
            watchdog.cancel()


def _child_error(message: dict[str, Any]) -> Exception:
    reason = str(message.get("reason") or "verification failed")
    kind = message.get("kind")
    if kind == "verification":
        return VerificationError(str(message.get("error") or "RepositoryError"), reason)
    if kind == "transfer":
        status = message.get("status")
        return TransferError(reason, status=int(status) if status is not None else None)
    return InstallError(reason)
