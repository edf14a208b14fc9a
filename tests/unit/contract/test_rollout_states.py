"""The rollout state machine: the contract's table, and the service refusing what it refuses."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator

import pytest
from sqlmodel import Session, SQLModel, create_engine

from edgefleet.control_plane.core.errors import ConflictError, InvalidRequestError
from edgefleet.control_plane.core.tables import Rollout
from edgefleet.control_plane.services.rollouts.lifecycle import act_on_rollout
from edgefleet.errors import TransitionError
from edgefleet.messages import BundleOffer, DeviceCommand
from edgefleet.states import rollout as states
from edgefleet.states.rollout import (
    OPERATOR_ACTIONS,
    ROLLOUT_STATES,
    TRANSITIONS,
    next_rollout_state,
)

# Spelled out again on purpose: a change to the table has to change this too.
ALLOWED = [
    ("draft", "start", "in_progress"),
    ("draft", "abort", "aborted"),
    ("in_progress", "pause", "paused"),
    ("in_progress", "promote", "in_progress"),
    ("in_progress", "retry", "in_progress"),
    ("in_progress", "abort", "aborted"),
    ("in_progress", "rollback", "rolled_back"),
    ("in_progress", "gate_breached", "aborted"),
    ("in_progress", "all_waves_passed", "complete"),
    ("in_progress", "devices_failed", "failed"),
    ("paused", "resume", "in_progress"),
    ("paused", "promote", "paused"),
    ("paused", "retry", "paused"),
    ("paused", "abort", "aborted"),
    ("paused", "rollback", "rolled_back"),
    ("complete", "rollback", "rolled_back"),
    ("aborted", "rollback", "rolled_back"),
    ("failed", "retry", "in_progress"),
    ("failed", "rollback", "rolled_back"),
]
TRIGGERS = sorted({trigger for _, trigger, _ in ALLOWED})
REFUSED = [
    (state, trigger)
    for state in ROLLOUT_STATES
    for trigger in TRIGGERS
    if (state, trigger) not in {(s, t) for s, t, _ in ALLOWED}
]


@pytest.mark.parametrize(("state", "trigger", "target"), ALLOWED)
def test_table_allows_transition(state: str, trigger: str, target: str) -> None:
    assert next_rollout_state(state, trigger) == target


def test_table_holds_exactly_the_allowed_transitions() -> None:
    assert dict(TRANSITIONS) == {(s, t): target for s, t, target in ALLOWED}


@pytest.mark.parametrize(("state", "trigger"), REFUSED)
def test_table_refuses_every_other_transition(state: str, trigger: str) -> None:
    with pytest.raises(TransitionError):
        next_rollout_state(state, trigger)


def test_refused_transition_names_state_and_action() -> None:
    with pytest.raises(TransitionError) as caught:
        next_rollout_state("complete", "pause")
    assert caught.value.machine == "rollout"
    assert caught.value.state == "complete"
    assert caught.value.trigger == "pause"
    assert "complete" in str(caught.value) and "pause" in str(caught.value)


def test_rolled_back_is_final() -> None:
    assert not [key for key in TRANSITIONS if key[0] == "rolled_back"]


def test_contract_module_imports_nothing_from_either_side() -> None:
    tree = ast.parse(inspect.getsource(states))
    imported = {
        name
        for node in ast.walk(tree)
        for name in (
            [alias.name for alias in node.names]
            if isinstance(node, ast.Import)
            else [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else []
        )
    }
    assert not {m for m in imported if m.startswith(("edgefleet.control_plane", "edgefleet.agent"))}


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, BundleOffer | DeviceCommand]] = []

    def publish_offer(self, device_id: str, offer: BundleOffer) -> None:
        self.sent.append((device_id, offer))

    def publish_command(self, device_id: str, command: DeviceCommand) -> None:
        self.sent.append((device_id, command))


@pytest.fixture
def session() -> Iterator[Session]:
    engine = create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        yield session
    engine.dispose()


def _rollout(session: Session, state: str) -> int:
    rollout = Rollout(bundle_id="b-1", state=state, wave_sizes=[1])
    session.add(rollout)
    session.commit()
    assert rollout.id is not None
    return rollout.id


@pytest.mark.parametrize(("state", "action"), [(s, a) for s, a in REFUSED if a in OPERATOR_ACTIONS])
def test_operator_action_the_state_refuses_is_a_conflict(
    session: Session, state: str, action: str
) -> None:
    rollout_id = _rollout(session, state)
    publisher = _Publisher()
    with pytest.raises(ConflictError) as caught:
        act_on_rollout(
            session=session, publisher=publisher, rollout_id=rollout_id, action=action, actor="op"
        )
    assert str(caught.value) == f"cannot {action} rollout {rollout_id}: it is {state}"
    assert publisher.sent == []


def test_orchestrator_event_is_not_an_operator_action(session: Session) -> None:
    rollout_id = _rollout(session, "in_progress")
    with pytest.raises(InvalidRequestError, match="unknown action gate_breached"):
        act_on_rollout(
            session=session,
            publisher=_Publisher(),
            rollout_id=rollout_id,
            action="gate_breached",
            actor="op",
        )


def test_pause_then_resume_go_through_the_table(session: Session) -> None:
    rollout_id = _rollout(session, "in_progress")
    publisher = _Publisher()
    for action, state in (("pause", "paused"), ("resume", "in_progress")):
        rollout = act_on_rollout(
            session=session, publisher=publisher, rollout_id=rollout_id, action=action, actor="op"
        )
        assert rollout.state == state
