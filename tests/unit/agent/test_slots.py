"""Slot directories and active.json: atomic record, alternating slots, highest release kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet import schema
from edgefleet.agent.errors import SlotError
from edgefleet.agent.install.slots import ActiveRecord, SlotStore


def _record(
    slot: str = "a", release: int = 1, bundle_id: str = "b1", **more: object
) -> ActiveRecord:
    return schema.convert(
        {
            "slot": slot,
            "bundle_id": bundle_id,
            "release": release,
            "model": "digits",
            "model_version": "1",
            **more,
        },
        ActiveRecord,
    )


def test_fresh_store_has_no_active_record_and_installs_into_slot_a(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    assert store.read_active() is None
    assert store.inactive_slot(None) == "a"


def test_write_active_round_trips_through_disk(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.write_active(_record("b", release=3, bundle_id="digits-3"))
    again = SlotStore(tmp_path).read_active()
    assert again is not None
    assert (again.slot, again.bundle_id, again.release) == ("b", "digits-3", 3)
    assert again.model == "digits"
    assert again.installed_at > 0


def test_inactive_slot_is_the_other_one(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    assert store.inactive_slot(_record("a")) == "b"
    assert store.inactive_slot(_record("b")) == "a"


def test_highest_release_survives_a_switch_to_a_lower_release(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.write_active(_record("a", release=5))
    store.write_active(_record("b", release=2))
    record = store.read_active()
    assert record is not None
    assert record.release == 2
    assert record.highest() == 5


def test_prepare_slot_empties_the_inactive_slot(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    stale = store.slot_dir("b") / "leftover.bin"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    path = store.prepare_slot("b")
    assert path == store.slot_dir("b")
    assert list(path.iterdir()) == []


def test_prepare_slot_refuses_to_empty_the_active_slot(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.write_active(_record("a"))
    with pytest.raises(SlotError, match="active slot"):
        store.prepare_slot("a")


def test_corrupt_active_record_is_a_slot_error(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.active_path.write_text("{not json")
    with pytest.raises(SlotError, match="invalid"):
        store.read_active()


def test_active_record_keeps_unknown_fields_from_a_newer_agent(tmp_path: Path) -> None:
    store = SlotStore(tmp_path)
    store.write_active(_record(journal="x"))
    record = store.read_active()
    assert record is not None
    assert record.unrecognized_fields == {"journal": "x"}
