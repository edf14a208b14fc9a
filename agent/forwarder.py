"""Drains the spool to the broker: QoS 1, rate-limited, deleting only acknowledged rows.

One thread. While the link is up it publishes the oldest rows of the most important
priority class, at most ``max_inflight`` unacknowledged at a time and at most
``rate`` per second (a token bucket), so a backlog replayed after an outage does
not starve live traffic or the consumers that must drain it (see DESIGN.md on
Mosquitto's queue limits). A row is deleted when its PUBACK arrives; a row not
acknowledged within ``ack_timeout`` is sent again, and the control plane stores
each ``event_id`` once, so a resend never becomes a duplicate event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.errors import SpoolError
from agent.spool import Spool
from edgefleet import topics
from edgefleet.messages import TelemetryEvent
from edgefleet.mqtt import MqttLink
from edgefleet.topics import Up

logger = logging.getLogger(__name__)

TICK = 0.05
SPOOL_PRIORITY = 0


class Forwarder:
    """Moves spooled events to ``fleet/<dev>/up/telemetry`` in the background."""

    def __init__(
        self,
        spool: Spool,
        link: MqttLink,
        device_id: str,
        *,
        rate: float = 500.0,
        max_inflight: int = 100,
        ack_timeout: float = 30.0,
        on_tick: Callable[[], None] = lambda: None,
    ) -> None:
        self.spool = spool
        self.link = link
        self.topic = topics.up(device_id, Up.TELEMETRY)
        self.rate = rate
        self.max_inflight = max_inflight
        self.ack_timeout = ack_timeout
        self.on_tick = on_tick
        self.sent = 0
        self.acked = 0
        self._inflight: dict[int, float] = {}
        self._acks: deque[int] = deque()
        self._tokens = float(max_inflight)
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spool-forwarder", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._settle_acks()

    def _loop(self) -> None:
        while not self._stop.wait(TICK):
            try:
                self.step()
            except (SpoolError, OSError):  # top of the loop: log and try again next tick
                logger.exception("spool forwarding failed")
            try:
                self.on_tick()
            except Exception:  # a bad periodic task must not stop telemetry for good
                logger.exception("periodic task failed")

    def step(self) -> int:
        """One round: flush, report drops, settle acks, send what rate and window allow."""
        self.spool.flush()
        drops = self.spool.take_drops()
        if drops:
            self.spool.append(
                TelemetryEvent(
                    kind="spool",
                    priority=SPOOL_PRIORITY,
                    data={
                        "depth": self.spool.depth(),
                        "dropped": {str(k): v for k, v in drops.items()},
                    },
                )
            )
            self.spool.flush()
        self._settle_acks()
        if not self.link.connected:
            return 0
        now = time.monotonic()
        self._tokens = min(float(self.max_inflight), self._tokens + (now - self._last) * self.rate)
        self._last = now
        for seq in [s for s, deadline in self._inflight.items() if deadline < now]:
            del self._inflight[seq]  # unacknowledged for too long: send it again
        room = min(int(self._tokens), self.max_inflight - len(self._inflight))
        rows = self.spool.next_batch(room, exclude=set(self._inflight))
        for seq, payload in rows:
            self._inflight[seq] = now + self.ack_timeout
            self.link.publish(self.topic, payload, qos=1, on_published=self._acker(seq))
        self._tokens -= len(rows)
        self.sent += len(rows)
        return len(rows)

    def _acker(self, seq: int) -> Callable[[], None]:
        def acked() -> None:  # network thread: only queue it
            self._acks.append(seq)

        return acked

    def _settle_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            done.append(self._acks.popleft())
        if done:
            self.spool.ack(done)
            for seq in done:
                self._inflight.pop(seq, None)
            self.acked += len(done)
