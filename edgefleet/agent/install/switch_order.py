"""The fleet-wide atomic switch, device side: wait ``armed`` for a signed switch order.

In an atomic rollout (``BundleOffer.atomic``) a device downloads, verifies, stages and
smoke-tests as usual, then records ``armed`` and waits. The control plane, once every
device (or its quorum) is armed, signs a *switch order* as a TUF target of its own
(``switch-order-r<rollout>.json``; the order is in the target's signed custom field
``switch_order``) and sends each device a ``switch`` command naming that target. The
command is only a hint: the device refreshes its TUF metadata (the same verifier and
trust root its bundles go through) and believes what the signed target says, nothing
the command says. So:

* a **forged** order (a target not in the signed metadata, or custom fields not signed
  by the targets key) is refused by TUF; the device stays armed and says why;
* a **replayed** order (an earlier rollout's, or another bundle's) names another
  rollout or bundle than the one armed and is refused the same way.

The order carries an absolute UTC moment ``switch_at`` (the control plane's clock plus
a lead, a few seconds) and ``valid_until``. Devices' clocks are assumed NTP-synced (the
agent's time floor already refuses a clock behind the signed metadata); the skew of the
switch is then the clocks' offsets plus the wake-up jitter of one thread.

The rule for a device that was away (documented in README, "Fleet-wide atomic switch"):

* order verified before ``switch_at``: switch at ``switch_at``;
* verified after ``switch_at`` but before ``valid_until``: switch at once, and report
  how late (``InstallReport.switch_late_s``);
* verified after ``valid_until``: do not switch; the staged bundle is dropped and the
  install ``failed`` ("switch order expired").

A ``drop_staged`` command for the armed rollout (staging failed elsewhere, or the quorum
was missed) ends the wait: the staged slot is dropped, the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated

import msgspec
from msgspec import Meta

from edgefleet import schema
from edgefleet.agent.errors import InstallError
from edgefleet.agent.install.checks import REFUSALS, refusal_reason
from edgefleet.agent.install.journal import Journal, JournalRecord
from edgefleet.agent.verification.transport import Verifier
from edgefleet.messages import DeviceCommand, InstallReport

logger = logging.getLogger(__name__)

ORDER_FIELD = "switch_order"
"""The signed target's custom field that carries the order."""
INBOX_SIZE = 16
"""Commands kept for a wait not yet begun; older ones are dropped first."""
POLL_S = 0.1
"""How often an armed install looks at its inbox."""


class SwitchOrder(schema.Open, frozen=True, kw_only=True):
    """A switch order as signed in the target's custom fields."""

    rollout_id: int
    bundle_id: Annotated[str, Meta(min_length=1, max_length=200)]
    switch_at_ms: int  # UTC epoch milliseconds (TUF's canonical JSON signs no floats)
    valid_until_ms: int  # a device verifying the order later than this does not switch

    @property
    def switch_at(self) -> float:
        """The moment to switch, UTC epoch seconds."""
        return self.switch_at_ms / 1000

    @property
    def valid_until(self) -> float:
        """The end of the order's validity, UTC epoch seconds."""
        return self.valid_until_ms / 1000


class OrderInbox:
    """``switch`` and ``drop_staged`` commands, posted by the network thread, taken by the
    worker's armed wait (the worker queue would make an armed install give way)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._commands: deque[DeviceCommand] = deque(maxlen=INBOX_SIZE)
        self._posted = threading.Event()

    def post(self, command: DeviceCommand) -> None:
        with self._mutex:
            self._commands.append(command)
        self._posted.set()

    def take(self, rollout_id: int | None, bundle_id: str) -> DeviceCommand | None:
        """The oldest command for this rollout and bundle; ``drop_staged`` before ``switch``."""
        with self._mutex:
            mine = [
                c
                for c in self._commands
                if c.rollout_id == rollout_id and c.bundle_id in (None, bundle_id)
            ]
            if not mine:
                return None
            chosen = next((c for c in mine if c.command == "drop_staged"), mine[0])
            self._commands.remove(chosen)
            return chosen

    def wait(self, timeout: float) -> None:
        """Sleep until something is posted or ``timeout`` passes."""
        self._posted.wait(timeout)
        self._posted.clear()


def verify_order(verifier: Verifier, command: DeviceCommand, record: JournalRecord) -> SwitchOrder:
    """The signed order a ``switch`` command points at, checked against the armed install.

    Raises:
        InstallError: the command names no target, the target is not signed (TUF), or the
            signed order is for another rollout or bundle (a replay).
        VerificationError, TransferError: as the verifier raises them.
    """
    target = command.args.get("target")
    if not isinstance(target, str) or not target:
        raise InstallError("switch command names no order target")
    with verifier.open(target) as signed:
        raw = signed.custom.get(ORDER_FIELD)
    try:
        order = schema.convert(raw, SwitchOrder)
    except msgspec.ValidationError as e:
        raise InstallError(f"signed switch order invalid: {schema.describe(e)}") from e
    if order.rollout_id != record.rollout_id or order.bundle_id != record.bundle_id:
        raise InstallError(
            f"switch order is for rollout {order.rollout_id} bundle {order.bundle_id}, "
            f"not the armed rollout {record.rollout_id} bundle {record.bundle_id}"
        )
    return order


class ArmedWait:
    """One armed install's wait for its order (on the worker thread)."""

    def __init__(
        self,
        *,
        journal: Journal,
        inbox: OrderInbox,
        verifier: Verifier,
        stopping: threading.Event,
        preempted: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.inbox = inbox
        self.verifier = verifier
        self.stopping = stopping
        self.preempted = preempted
        self.clock = clock

    def run(
        self, record: JournalRecord, send: Callable[..., InstallReport]
    ) -> tuple[JournalRecord, SwitchOrder | None]:
        """Arm ``record`` (recorded first), then wait for a valid order and its moment.

        Returns:
            The record and the order, once the moment has come; or the order None when
            the agent is stopping (the install stays ``armed`` in the journal).

        Raises:
            InstallError: the staged bundle is to be dropped: a ``drop_staged`` command,
                an order past ``valid_until``, or other work queued behind the wait.
        """
        if record.state != "armed":
            record = self.journal.fire(record, "arm")
        send("armed")
        logger.info("armed for atomic switch bundle_id=%s rollout_id=%s",
                    record.bundle_id, record.rollout_id)  # fmt: skip
        while True:
            if self.stopping.is_set():
                return record, None
            command = self.inbox.take(record.rollout_id, record.bundle_id)
            if command is None:
                if self.preempted(record.bundle_id):
                    raise InstallError("armed install given up for newer work")
                self.inbox.wait(POLL_S)
                continue
            if command.command == "drop_staged":
                raise InstallError(
                    f"staged bundle dropped: {command.reason or 'atomic switch off'}"
                )
            try:
                order = verify_order(self.verifier, command, record)
            except REFUSALS as e:  # forged, replayed or unfetchable: refused, still armed
                reason = refusal_reason(e)
                logger.warning("switch order refused bundle_id=%s reason=%s",
                               record.bundle_id, reason)  # fmt: skip
                send("armed", reason=f"switch order refused: {reason}")
                continue
            now = self.clock()
            if now > order.valid_until:
                raise InstallError(
                    f"switch order expired: verified {now - order.valid_until:.1f} s "
                    f"after its validity ended"
                )
            if self.stopping.wait(max(0.0, order.switch_at - self.clock())):
                return record, None
            return record, order
