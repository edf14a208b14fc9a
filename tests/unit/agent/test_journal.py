"""The install state machine: its table, its resume map and its crash-loop guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgefleet.agent.errors import JournalError
from edgefleet.agent.install.journal import (
    Journal,
    JournalRecord,
    next_state,
    resume_action,
)
from edgefleet.maintenance import MaintenanceWindow
from edgefleet.states.install import RESUME, TRANSITIONS


def new_record(journal: Journal) -> JournalRecord:
    return journal.begin(JournalRecord(bundle_id="b-2", target="b-2.tar", release=2))


def test_happy_path_walks_every_state_to_committed(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = new_record(journal)
    for event in ("start", "downloaded", "unpacked", "smoke_passed", "switched"):
        record = journal.fire(record, event)  # type: ignore[arg-type]
    record = journal.fire(record, "probation_passed")
    assert record.history == [
        "offered", "downloading", "verified", "staged", "smoke_tested", "active", "committed",
    ]  # fmt: skip
    assert journal.read() == record


def test_every_state_is_recorded_on_disk_before_the_caller_continues(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = journal.fire(new_record(journal), "start")
    on_disk = json.loads((tmp_path / "journal.json").read_text())
    assert on_disk["state"] == "downloading" == record.state


def test_transition_not_in_the_table_is_refused() -> None:
    with pytest.raises(JournalError):
        next_state("offered", "switched")
    with pytest.raises(JournalError):
        next_state("committed", "start")


def test_every_state_before_the_switch_can_fail_and_only_active_rolls_back() -> None:
    for state in ("offered", "downloading", "verified", "staged", "smoke_tested"):
        assert TRANSITIONS[(state, "error")] == "failed"  # type: ignore[index]
    assert TRANSITIONS[("active", "breach")] == "rolled_back"
    assert TRANSITIONS[("committed", "rollback")] == "rolled_back"


@pytest.mark.parametrize(
    ("state", "action"),
    [
        ("offered", "reinstall"),
        ("downloading", "reinstall"),
        ("verified", "reinstall"),
        ("staged", "rollback"),
        ("smoke_tested", "rollback"),
        ("deferred", "await_switch"),
        ("active", "probation"),
        ("committed", "none"),
        ("failed", "none"),
        ("rolled_back", "none"),
    ],
)
def test_resume_map_says_where_each_saved_state_continues(state: str, action: str) -> None:
    record = JournalRecord(bundle_id="b", target="b.tar", release=1, state=state)  # type: ignore[arg-type]
    assert resume_action(record) == action
    assert RESUME.get(state, "rollback") == action or action == "none"  # type: ignore[call-overload]


def test_a_deferred_install_is_recorded_with_its_window_and_resumes_waiting(
    tmp_path: Path,
) -> None:
    journal = Journal(tmp_path)
    window = MaintenanceWindow(cron="0 2 * * *", duration_s=3600, tz="Europe/Berlin")
    record = journal.begin(
        JournalRecord(bundle_id="b-2", target="b-2.tar", release=2, maintenance_window=window)
    )
    for event in ("start", "downloaded", "unpacked", "smoke_passed"):
        record = journal.fire(record, event)  # type: ignore[arg-type]
    record = journal.fire(record, "defer", slot="b", reason="update lock held by app")
    # A restart reads it back from disk: staged and waiting, with the window to wait for.
    saved = journal.note_restart(Journal(tmp_path).read())  # type: ignore[arg-type]
    assert saved.state == "deferred" and saved.slot == "b"
    assert saved.maintenance_window == window
    assert resume_action(saved) == "await_switch"
    assert journal.fire(saved, "switched").state == "active"
    # The slot re-verified: the restart counter is cleared, so waiting is no crash loop.
    for _ in range(5):
        saved = journal.note_restart(saved)
    assert resume_action(saved) == "rollback"
    assert resume_action(journal.clear_restarts(saved)) == "await_switch"


def test_restart_loop_turns_into_a_roll_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    record = journal.fire(new_record(journal), "start")
    for _ in range(4):
        record = journal.note_restart(record)
    assert resume_action(record) == "rollback"


def test_save_counter_ends_a_looping_install_as_failed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_saves=3)
    record = new_record(journal)
    record = journal.fire(record, "start")
    record = journal.fire(record, "downloaded")
    record = journal.fire(record, "unpacked")  # fourth save: over the limit
    assert record.state == "failed"
    assert "looped" in (record.reason or "")


def test_unreadable_journal_is_treated_as_empty(tmp_path: Path) -> None:
    (tmp_path / "journal.json").write_text("{torn")
    assert Journal(tmp_path).read() is None
