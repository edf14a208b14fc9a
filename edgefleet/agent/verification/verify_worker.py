"""The child process of ``edgefleet.agent.verification.verifier.ProcessVerifier``: one offer's TUF
verification.

``python -m edgefleet.agent.verification.verify_worker '<job json>'`` with the parent agent on the
other
end of stdin/stdout (protocol in ``edgefleet.agent.verification.verifier``). It fetches nothing
itself:
every repository file comes from the parent through ``PipeTransport``. It exits
when it has said ``done`` or ``error``, when told to stop, or when the parent goes
away (its stdin closes), so a killed agent never leaves one behind.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edgefleet.agent.errors import InstallError, TransferError, VerificationError
from edgefleet.agent.verification.verifier import DATA, END, FAILED, GO, read_frame

logger = logging.getLogger("edgefleet.agent.verification.verify_worker")


class PipeChannel:
    """JSON lines out to the parent, frames in from it."""

    def __init__(self, incoming: IO[bytes], outgoing: IO[bytes]) -> None:
        self.incoming = incoming
        self.outgoing = outgoing

    def send(self, message: dict[str, Any]) -> None:
        self.outgoing.write(json.dumps(message).encode() + b"\n")
        self.outgoing.flush()

    def receive(self) -> tuple[bytes, bytes]:
        return read_frame(self.incoming)


class PipeTransport:
    """Asks the parent for each file; it streams the bytes back, bounded by ``max_length``."""

    def __init__(self, channel: PipeChannel) -> None:
        self.channel = channel

    def stream(self, path: str, max_length: int) -> Iterator[bytes]:
        self.channel.send({"op": "fetch", "path": path, "max_length": max_length})
        return self._frames()

    def _frames(self) -> Iterator[bytes]:
        finished = False
        try:
            while True:
                kind, payload = self.channel.receive()
                if kind == DATA:
                    yield payload
                elif kind == END:
                    finished = True
                    return
                elif kind == FAILED:
                    finished = True
                    error = json.loads(payload)
                    raise TransferError(str(error.get("reason")), status=error.get("status"))
                else:
                    raise EOFError(f"unexpected frame {kind!r} during a fetch")
        finally:
            # Stopped early (ngclient refused the bytes so far): the parent still
            # sends the rest of the file, up to the bound; read it off the pipe.
            while not finished:
                kind, _payload = self.channel.receive()
                finished = kind in (END, FAILED)


def run(job: dict[str, Any], channel: PipeChannel) -> None:
    """Verify ``job["target"]``, telling the parent the outcome over ``channel``.

    Refusals and broken transfers go to the parent as ``error`` messages, not exceptions.

    Raises:
        EOFError, BrokenPipeError: the parent went away.
    """
    from edgefleet.agent.verification.tuf_client import TargetVerifier

    verifier = TargetVerifier(Path(job["data_dir"]), PipeTransport(channel))
    try:
        signed = verifier.find(str(job["target"]))
        channel.send(
            {"op": "target", "name": signed.name, "length": signed.length, "custom": signed.custom}
        )
        kind, _payload = channel.receive()
        if kind != GO:
            return
        path = verifier.download()
        channel.send({"op": "done", "path": str(path)})
    except VerificationError as e:
        channel.send({"op": "error", "kind": "verification", "error": e.error, "reason": e.detail})
    except TransferError as e:
        channel.send({"op": "error", "kind": "transfer", "reason": e.reason, "status": e.status})
    except InstallError as e:
        channel.send({"op": "error", "kind": "install", "reason": e.reason})


def main(argv: list[str]) -> int:
    """The child's entry point; ``argv[1]`` is the job as JSON. Exit 3: parent gone."""
    job = json.loads(argv[1])
    # The protocol owns the real stdout; anything printed by accident goes to stderr.
    outgoing = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        level=int(job.get("log_level", logging.INFO)),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        run(job, PipeChannel(sys.stdin.buffer, outgoing))
    except (EOFError, BrokenPipeError):
        logger.warning("agent went away; verification abandoned target=%s", job.get("target"))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
