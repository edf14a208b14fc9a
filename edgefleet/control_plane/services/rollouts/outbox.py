"""What a rollout's state changes owe devices: offers and commands, and how they are sent.

A state change collects its messages in an ``Outbox`` instead of publishing them at
once, so the caller decides whether they go out before or after its commit (see
``lifecycle.create_rollout`` and ``orchestrator``).
"""

from __future__ import annotations

from typing import Protocol

from edgefleet import schema
from edgefleet.control_plane.core.tables import Bundle, Rollout
from edgefleet.maintenance import MaintenanceWindow
from edgefleet.messages import BundleOffer, DeviceCommand


class FleetPublisher(Protocol):
    """Where offers and commands go: the fleet MQTT link, or a recorder in tests."""

    def publish_offer(self, device_id: str, offer: BundleOffer) -> None: ...

    def publish_command(self, device_id: str, command: DeviceCommand) -> None: ...


Outbox = list[tuple[str, BundleOffer | DeviceCommand]]
"""Messages a state change owes devices, sent by the caller around its commit."""


def publish_outbox(publisher: FleetPublisher, outbox: Outbox) -> None:
    """Send every message of ``outbox``, in order, each to its device."""
    for device_id, message in outbox:
        if isinstance(message, BundleOffer):
            publisher.publish_offer(device_id, message)
        else:
            publisher.publish_command(device_id, message)


def bundle_offer(bundle: Bundle, rollout: Rollout) -> BundleOffer:
    """The offer that asks a device to install ``bundle`` for ``rollout``, with the
    rollout's maintenance window when it has one (see ``BundleOffer`` on why the
    window may travel unsigned)."""
    window = rollout.maintenance_window
    return BundleOffer(
        rollout_id=rollout.id,
        bundle_id=bundle.id,
        kind="agent" if (bundle.manifest or {}).get("kind") == "agent" else "model",
        target=bundle.target,
        release=bundle.release,
        maintenance_window=schema.convert(window, MaintenanceWindow) if window else None,
    )


def shadow_start(bundle: Bundle, rollout: Rollout) -> DeviceCommand:
    """The command that runs ``bundle`` beside a device's active model (shadow strategy)."""
    return DeviceCommand(
        command="shadow_start",
        rollout_id=rollout.id,
        bundle_id=bundle.id,
        args={"target": bundle.target, "release": bundle.release},
    )
