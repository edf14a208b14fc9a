"""Drains the spool to the broker and deletes only what the control plane receipted.

One thread. While the link is up it publishes the oldest rows of the most important
priority class (telemetry to ``up/telemetry``, install reports to ``up/report``), at
most ``max_inflight`` without a PUBACK, at most ``max_unreceipted`` without a receipt,
and at most ``rate`` per second (a token bucket), so a backlog replayed after an
outage does not starve live traffic or the consumers that must drain it (see
DESIGN.md on Mosquitto's queue limits).

The broker's PUBACK only frees the in-flight window: a broker may acknowledge and then
lose a message (a restart without persistence, no session for the control plane). A
row is deleted when a ``Receipt`` on ``down/receipt`` names its event id; a row not
receipted within ``receipt_timeout`` of its send is sent again, and the control plane
stores each ``event_id`` once, so a resend never becomes a duplicate.

Receipts arrive on paho's network thread, which only queues them (``receive``); this
thread applies them. Once the link is back and the spool has stopped dropping for
``SUMMARY_QUIET_S`` (or the summary is ``SUMMARY_MAX_AGE_S`` old), the running drop
summary is sealed into one ``spool`` event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable

from edgefleet import topics
from edgefleet.agent.errors import SpoolError
from edgefleet.agent.telemetry.spool import REPORT, Spool
from edgefleet.mqtt import MqttLink
from edgefleet.topics import Up

logger = logging.getLogger(__name__)

TICK = 0.05
CHECK_EVERY_S = 1.0
"""How often the spool file is checked for having been deleted or overwritten."""
SUMMARY_QUIET_S = 5.0
"""Drops must have stopped this long, with the link up, before their summary is sent:
a dropped event that was already with the broker may still be receipted meanwhile,
and is then taken off the summary."""
SUMMARY_MAX_AGE_S = 60.0
"""With the link up and drops going on (the broker is there, the control plane is not),
the running summary is sent once it is this old, and a new one starts."""


class Forwarder:
    """Moves spooled rows to their up topics in the background; deletes on receipt."""

    def __init__(
        self,
        spool: Spool,
        link: MqttLink,
        device_id: str,
        *,
        rate: float = 500.0,
        max_inflight: int = 100,
        max_unreceipted: int = 1000,
        receipt_timeout: float = 30.0,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.spool = spool
        self.link = link
        self.topics = {
            "telemetry": topics.up(device_id, Up.TELEMETRY),
            REPORT: topics.up(device_id, Up.REPORT),
        }
        self.rate = rate
        self.max_inflight = max_inflight
        self.max_unreceipted = max(max_unreceipted, max_inflight)
        self.receipt_timeout = receipt_timeout
        self.on_tick = on_tick
        self.sent = 0
        self.acked = 0
        self.receipted = 0
        self._pending: dict[str, tuple[int, float]] = {}  # event id -> (seq, sent at)
        self._inflight: set[str] = set()  # sent, no PUBACK yet
        self._sent_order: deque[tuple[float, str]] = deque()
        self._acks: deque[str] = deque()
        self._receipts: deque[list[str]] = deque()
        self._tokens = float(max_inflight)
        self._last = time.monotonic()
        self._next_check = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spool-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._settle()

    def receive(self, event_ids: Iterable[str]) -> None:
        """A receipt's event ids (any thread; the network thread only queues them)."""
        self._receipts.append(list(event_ids))

    @property
    def unreceipted(self) -> int:
        return len(self._pending)

    def _loop(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.step()
            except Exception:  # top of the loop: telemetry must not stop for good
                logger.exception("spool forwarding failed")
            try:
                self.on_tick()
            except Exception:  # a bad periodic task must not stop telemetry for good
                logger.exception("periodic task failed")

    def step(self) -> int:
        """One round: flush, settle acks and receipts, resend what timed out, send more."""
        now = time.monotonic()
        periodic = now >= self._next_check
        if periodic:
            self._next_check = now + CHECK_EVERY_S
            if self.spool.check():  # recreated: every row has a new key
                self._forget_all()
        try:
            self.spool.flush()
        except SpoolError:  # a full disk: what is spooled already still goes out
            logger.exception("spool flush failed")
        self._settle()
        self._expire(now)
        if not self.link.connected:
            return 0
        if periodic and (
            self.spool.seconds_since_drop() >= SUMMARY_QUIET_S
            or self.spool.summary_age() >= SUMMARY_MAX_AGE_S
        ):
            self.spool.seal_summary()
        self._tokens = min(float(self.max_inflight), self._tokens + (now - self._last) * self.rate)
        self._last = now
        room = min(
            int(self._tokens),
            self.max_inflight - len(self._inflight),
            self.max_unreceipted - len(self._pending),
        )
        rows = self.spool.next_batch(room, exclude=(seq for seq, _ in self._pending.values()))
        for row in rows:
            self._pending[row.event_id] = (row.seq, now)
            self._inflight.add(row.event_id)
            self._sent_order.append((now, row.event_id))
            self.link.publish(
                self.topics.get(row.channel, self.topics["telemetry"]),
                row.payload,
                qos=1,
                on_published=self._acker(row.event_id),
            )
        self._tokens -= len(rows)
        self.sent += len(rows)
        return len(rows)

    def _acker(self, event_id: str) -> Callable[[], None]:
        def acked() -> None:  # network thread: only queue it
            self._acks.append(event_id)

        return acked

    def _settle(self) -> None:
        while self._acks:
            event_id = self._acks.popleft()
            if event_id in self._inflight:
                self._inflight.discard(event_id)
                self.acked += 1
        receipted: list[str] = []
        while self._receipts:
            receipted.extend(self._receipts.popleft())
        if receipted:
            self.receipted += self.spool.receipt(receipted)
            for event_id in receipted:
                self._pending.pop(event_id, None)
                self._inflight.discard(event_id)

    def _expire(self, now: float) -> None:
        """Rows sent ``receipt_timeout`` ago without a receipt become sendable again."""
        deadline = now - self.receipt_timeout
        while self._sent_order and self._sent_order[0][0] < deadline:
            sent_at, event_id = self._sent_order.popleft()
            entry = self._pending.get(event_id)
            if entry is not None and entry[1] == sent_at:
                del self._pending[event_id]
                self._inflight.discard(event_id)  # paho resends its own un-PUBACKed ones

    def _forget_all(self) -> None:
        self._pending.clear()
        self._inflight.clear()
        self._sent_order.clear()
