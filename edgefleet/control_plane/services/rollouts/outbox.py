"""What a rollout's state changes owe devices: offers and commands, and how they are sent.

A state change collects its messages in an ``Outbox`` instead of publishing them at
once, so the caller decides whether they go out before or after its commit (see
``lifecycle.create_rollout`` and ``orchestrator``).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlmodel import Session

from edgefleet import schema
from edgefleet.control_plane.core.tables import Bundle, Rollout
from edgefleet.control_plane.services.groups import window_for_device
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


def bundle_offer(
    bundle: Bundle, rollout: Rollout, *, group_window: dict[str, Any] | None = None
) -> BundleOffer:
    """The offer that asks a device to install ``bundle`` for ``rollout``, with the
    rollout's maintenance window when it has one, else ``group_window`` (the device's
    groups', ``groups.window_for_device``; see ``BundleOffer`` on why the window may
    travel unsigned); ``atomic`` for an atomic rollout (``rollouts.atomic``)."""
    window = rollout.maintenance_window or group_window
    return BundleOffer(
        rollout_id=rollout.id,
        bundle_id=bundle.id,
        kind="agent" if (bundle.manifest or {}).get("kind") == "agent" else "model",
        target=bundle.target,
        release=bundle.release,
        maintenance_window=schema.convert(window, MaintenanceWindow) if window else None,
        atomic=rollout.atomic is not None,
    )


def device_offer(session: Session, bundle: Bundle, rollout: Rollout, device_id: str) -> BundleOffer:
    """``bundle_offer`` for one device: its groups' window when the rollout gives none."""
    group_window = None
    if rollout.maintenance_window is None:
        with session.no_autoflush:  # a read: the caller's pending changes stay pending
            group_window = window_for_device(session=session, device_id=device_id)
    return bundle_offer(bundle, rollout, group_window=group_window)


def shadow_start(bundle: Bundle, rollout: Rollout) -> DeviceCommand:
    """The command that runs ``bundle`` beside a device's active model (shadow strategy)."""
    return DeviceCommand(
        command="shadow_start",
        rollout_id=rollout.id,
        bundle_id=bundle.id,
        args={"target": bundle.target, "release": bundle.release},
    )
