"""Log requests this control plane waits on, and the chunks that answer them.

Devices answer a ``LogRequest`` on their own ``up/logs``. Every replica subscribes to
``fleet/+/up/logs`` plainly (not in the shared group), so the replica whose API call is
waiting always receives the answer, whichever replica's link the device's other traffic
goes to; a replica that holds no request with the answer's id drops it. Answers are
rare, operator-driven and bounded (``LOG_MAX_BYTES``), so each replica seeing them all
costs little, and nothing needs a database row or a poll.

An answer counts only from the device it was asked of: the device id is the topic's
(which the broker ACL ties to the device's credentials), never the payload's, so a
device that learnt another's request id cannot answer in its place.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from edgefleet.messages import LogChunk, LogRecord, LogRequest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogAnswer:
    """A device's whole answer: records oldest first, and whether older ones were left out."""

    records: list[LogRecord]
    truncated: bool
    omitted: int


@dataclass
class PendingLogs:
    """One request's chunks as they arrive; complete when every seq up to ``last`` is in."""

    device_id: str
    request: LogRequest
    chunks: dict[int, LogChunk] = field(default_factory=dict)
    last_seq: int | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def add(self, chunk: LogChunk) -> None:
        self.chunks.setdefault(chunk.seq, chunk)
        if chunk.last:
            self.last_seq = chunk.seq
        if self.last_seq is not None and all(s in self.chunks for s in range(self.last_seq + 1)):
            self.done.set()

    def answer(self) -> LogAnswer:
        assert self.last_seq is not None, "answer() before the last chunk arrived"
        ordered = [self.chunks[s] for s in range(self.last_seq + 1)]
        return LogAnswer(
            records=[record for chunk in ordered for record in chunk.records],
            truncated=any(c.truncated for c in ordered),
            omitted=max(c.omitted for c in ordered),
        )


class LogRequests:
    """The requests open on this replica, by request id (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, PendingLogs] = {}

    def open(self, device_id: str, request: LogRequest) -> PendingLogs:
        pending = PendingLogs(device_id, request)
        with self._lock:
            self._pending[request.request_id] = pending
        return pending

    def close(self, request_id: str) -> None:
        with self._lock:
            self._pending.pop(request_id, None)

    def deliver(self, device_id: str, chunk: LogChunk) -> bool:
        """Add ``chunk`` from ``device_id`` (from its topic) to its request; False when the
        request is not open here (another replica's, or over) or was asked of another
        device."""
        with self._lock:
            pending = self._pending.get(chunk.request_id)
            if pending is None:
                return False
            if pending.device_id != device_id:
                logger.warning(
                    "log answer dropped device_id=%s reason=request was for device_id=%s",
                    device_id,
                    pending.device_id,
                )
                return False
            pending.add(chunk)
        return True
