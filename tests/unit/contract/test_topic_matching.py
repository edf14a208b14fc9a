"""The MQTT link routes each message by its own topic-filter match (MQTT 3.1.1 §4.7)."""

from __future__ import annotations

import pytest

from edgefleet.mqtt import topic_matches


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("fleet/+/up/telemetry", "fleet/dev-abcdef01/up/telemetry", True),
        ("fleet/+/up/telemetry", "fleet/dev-abcdef01/up/status", False),
        ("fleet/+/up/telemetry", "fleet/dev-abcdef01/up/telemetry/extra", False),
        ("fleet/+/up/telemetry", "fleet/up/telemetry", False),
        ("fleet/all/down/#", "fleet/all/down/metadata/root.json", True),
        ("fleet/all/down/#", "fleet/all/down", True),  # '#' also matches the parent level
        ("fleet/all/down/#", "fleet/dev-abcdef01/down/offer", False),
        ("+/x", "$SYS/x", False),  # a wildcard first never matches a '$' topic
        ("#", "$SYS/broker/uptime", False),
        ("$SYS/#", "$SYS/broker/uptime", True),
    ],
)
def test_topic_filters_match_as_mqtt_defines(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected
