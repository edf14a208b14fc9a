"""The armed wait for a fleet-wide switch order: a signed order for this rollout and bundle
switches at its moment; a forged, replayed or expired one, or a drop, does not."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.errors import InstallError
from edgefleet.agent.install.journal import Journal, JournalRecord
from edgefleet.agent.install.switch_order import ArmedWait, OrderInbox
from edgefleet.agent.verification.transport import SignedBundle
from edgefleet.messages import DeviceCommand

NOW = 1_800_000_000.0


class SignedTargets:
    """A verifier over a fixed set of signed targets (what TUF would find in metadata);
    a target not in it is refused as ngclient refuses one: ``InstallError``."""

    def __init__(self, targets: dict[str, dict[str, Any]]) -> None:
        self.targets = targets

    @contextlib.contextmanager
    def open(self, target: str) -> Iterator[SignedBundle]:
        if target not in self.targets:
            raise InstallError(f"target {target!r} not in signed metadata")
        yield SignedBundle(target, 1, self.targets[target], lambda: Path("/nonexistent"))


def order(rollout_id: int, bundle_id: str, *, at: float, valid_s: float = 60) -> dict[str, Any]:
    return {"switch_order": {"rollout_id": rollout_id, "bundle_id": bundle_id,
                             "switch_at_ms": round(at * 1000),
                             "valid_until_ms": round((at + valid_s) * 1000)}}  # fmt: skip


def switch(target: str, rollout_id: int = 7) -> DeviceCommand:
    return DeviceCommand(command="switch", rollout_id=rollout_id, bundle_id="b-2",
                         args={"target": target})  # fmt: skip


def smoke_tested(journal: Journal) -> JournalRecord:
    record = journal.begin(JournalRecord(bundle_id="b-2", target="b-2.tar", release=2,
                                         rollout_id=7, atomic=True))  # fmt: skip
    for event in ("start", "downloaded", "unpacked", "smoke_passed"):
        record = journal.fire(record, event)  # type: ignore[arg-type]
    return record


def waiter(tmp_path: Path, targets: dict[str, dict[str, Any]], now: float = NOW) -> ArmedWait:
    return ArmedWait(journal=Journal(tmp_path), inbox=OrderInbox(),
                     verifier=SignedTargets(targets), stopping=threading.Event(),
                     preempted=lambda _b: False, clock=lambda: now)  # fmt: skip


def test_forged_and_replayed_orders_are_refused_and_the_signed_one_switches(
    tmp_path: Path,
) -> None:
    wait = waiter(tmp_path, {
        "switch-order-r3.json": order(3, "b-1", at=NOW - 100),  # an older rollout's order
        "switch-order-r7.json": order(7, "b-2", at=NOW),
    })  # fmt: skip
    sent: list[tuple[str, str | None]] = []
    wait.inbox.post(switch("switch-order-r999.json"))  # forged: not in signed metadata
    wait.inbox.post(switch("switch-order-r3.json"))  # replayed under this rollout's id
    wait.inbox.post(switch("switch-order-r7.json"))

    record, signed = wait.run(smoke_tested(wait.journal),
                              lambda state, reason=None: sent.append((state, reason)))  # fmt: skip

    assert record.state == "armed" and wait.journal.read() == record
    assert signed is not None and signed.switch_at == NOW
    assert [s for s, _r in sent] == ["armed", "armed", "armed"]
    assert "not in signed metadata" in str(sent[1][1])
    assert "is for rollout 3 bundle b-1, not the armed rollout 7 bundle b-2" in str(sent[2][1])


def test_an_order_verified_after_its_validity_drops_the_staged_bundle(tmp_path: Path) -> None:
    wait = waiter(tmp_path, {"o.json": order(7, "b-2", at=NOW - 120, valid_s=60)})
    wait.inbox.post(switch("o.json"))
    with pytest.raises(InstallError, match="switch order expired"):
        wait.run(smoke_tested(wait.journal), lambda *_a, **_k: None)


def test_a_drop_for_the_armed_rollout_ends_the_wait_and_one_for_another_does_not(
    tmp_path: Path,
) -> None:
    wait = waiter(tmp_path, {})
    wait.inbox.post(DeviceCommand(command="drop_staged", rollout_id=6, bundle_id="b-2"))
    wait.inbox.post(DeviceCommand(command="drop_staged", rollout_id=7, bundle_id="b-2",
                                  reason="atomic switch off: staging failed on dev-x"))  # fmt: skip
    with pytest.raises(InstallError, match="staged bundle dropped: atomic switch off"):
        wait.run(smoke_tested(wait.journal), lambda *_a, **_k: None)
    assert wait.inbox.take(6, "b-2") is not None  # the other rollout's drop is still there


def test_a_stopping_agent_leaves_the_install_armed(tmp_path: Path) -> None:
    wait = waiter(tmp_path, {})
    wait.stopping.set()
    record, signed = wait.run(smoke_tested(wait.journal), lambda *_a, **_k: None)
    assert signed is None and wait.journal.read() == record and record.state == "armed"
