"""The control plane's MQTT identity: a shared-subscription group nobody can guess."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edgefleet.control_plane.broker.failures import rejection_reason
from edgefleet.control_plane.broker.link import stable_shared_group
from edgefleet.control_plane.core.settings import Settings
from edgefleet.errors import MessageError
from edgefleet.messages import decode_message


def test_shared_group_is_random_kept_in_the_data_dir_and_a_valid_setting(tmp_path: Path) -> None:
    first = stable_shared_group(tmp_path / "a")
    assert stable_shared_group(tmp_path / "a") == first  # kept across restarts
    assert stable_shared_group(tmp_path / "b") != first  # not a fixed, guessable name
    assert Settings(data_dir=tmp_path, mqtt_shared_group=first).mqtt_shared_group == first


@pytest.mark.parametrize("group", ["short", "has/slash", "plus+", "hash#", "x" * 65])
def test_shared_group_setting_refuses_what_is_no_mqtt_share_name(group: str) -> None:
    with pytest.raises(ValidationError):
        Settings(mqtt_shared_group=group)


def test_a_replica_releases_its_share_of_device_traffic_when_it_disconnects() -> None:
    assert Settings().mqtt_session_expiry_s == 0


def test_refused_messages_are_counted_under_a_small_set_of_reasons() -> None:
    def reason_for(payload: bytes) -> str:
        with pytest.raises(MessageError) as refused:
            decode_message(payload)
        return rejection_reason(refused.value)

    assert reason_for(b"[" * 300_000) == "too_large"
    assert reason_for(b"[" * 100 + b"]" * 100) == "too_deep"
    assert reason_for(b"{broken") == "invalid"
    assert reason_for(b'{"type": "status"}') == "invalid"
    assert rejection_reason(OverflowError("timestamp out of range")) == "failed"
