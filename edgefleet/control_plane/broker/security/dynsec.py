"""The dynamic-security plugin: the configuration a broker starts with, and live changes.

Roles carry ``subscribePattern`` ACLs the plugin checks at SUBSCRIBE (the package
docstring says why ``acl_file`` cannot); a running broker is changed through the
plugin's MQTT API as ``cp-admin`` (``DynsecAdmin``).
"""

from __future__ import annotations

import json
import logging
import queue
import secrets
import threading
from collections.abc import Sequence
from typing import Any

from edgefleet import topics
from edgefleet.control_plane.broker.security.files import (
    ADMIN_USER,
    Admin,
    BrokerAuthFiles,
    check_control_name,
    check_device_id,
    read_admin,
    read_devices,
    read_identities,
)
from edgefleet.control_plane.broker.security.passwords import (
    _password_fields,
    read_password_file,
)
from edgefleet.control_plane.core.errors import BrokerError
from edgefleet.errors import TransportError
from edgefleet.mqtt import BrokerAddress, Incoming, MqttLink

logger = logging.getLogger(__name__)

CONTROL_ROLE = "edgefleet-control"
ADMIN_ROLE = "edgefleet-admin"
DYNSEC_TOPIC = "$CONTROL/dynamic-security/v1"
DYNSEC_RESPONSE_TOPIC = f"{DYNSEC_TOPIC}/response"
ADMIN_TIMEOUT_S = 10.0
# Errors a delete may answer with when there was nothing to delete.
_ABSENT = ("Client not found", "Role not found")
# On a password listener cp-admin's client id is its username: one session at a time.
_ADMIN_LOCK = threading.Lock()


def _acl(acltype: str, topic: str, *, allow: bool = True) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "priority": 0, "allow": allow}


def broadcast_filter() -> str:
    """What every device may read: ``fleet/all/down/#``."""
    return f"{topics.ROOT}/{topics.BROADCAST}/down/#"


def device_role(device_id: str) -> dict[str, Any]:
    """One device's role: its own up subtree to publish, its down subtree and the
    broadcast to subscribe and receive; nothing else (default deny)."""
    own_down = topics.device_down_filter(device_id)
    return {
        "rolename": device_id,
        "acls": [
            _acl("publishClientSend", f"{topics.ROOT}/{device_id}/up/#"),
            _acl("publishClientReceive", own_down),
            _acl("publishClientReceive", broadcast_filter()),
            _acl("subscribePattern", own_down),
            _acl("subscribePattern", broadcast_filter()),
        ],
    }


def control_role() -> dict[str, Any]:
    """The control plane: all of ``fleet/``, and shared subscriptions in any group."""
    everything = f"{topics.ROOT}/#"
    return {
        "rolename": CONTROL_ROLE,
        "acls": [
            _acl("publishClientSend", everything),
            _acl("publishClientReceive", everything),
            _acl("subscribePattern", everything),
            _acl("subscribePattern", f"$share/+/{everything}"),
        ],
    }


def admin_role() -> dict[str, Any]:
    """``cp-admin``: the plugin's own API, nothing of the fleet."""
    control = "$CONTROL/dynamic-security/#"
    return {
        "rolename": ADMIN_ROLE,
        "acls": [
            _acl("publishClientSend", control),
            _acl("publishClientReceive", control),
            _acl("subscribePattern", control),
        ],
    }


def device_client(device_id: str, password_hash: str = "") -> dict[str, Any]:
    client: dict[str, Any] = {
        "username": device_id,
        "clientid": device_id,
        "roles": [{"rolename": device_id}],
    }
    if password_hash:
        client.update(_password_fields(password_hash))
    return client


def render_dynsec_config(files: BrokerAuthFiles) -> bytes:
    """The plugin's configuration from the auth files: what the broker starts with."""
    hashes = read_password_file(files.password_file)
    control_hashes = read_password_file(files.control_file)
    clients: list[dict[str, Any]] = []
    for user in sorted({*control_hashes, *read_identities(files)}):
        check_control_name(user)
        client: dict[str, Any] = {"username": user, "roles": [{"rolename": CONTROL_ROLE}]}
        if user in control_hashes:
            client.update(_password_fields(control_hashes[user]))
        clients.append(client)
    if ADMIN_USER in hashes:
        clients.append(
            {
                "username": ADMIN_USER,
                "roles": [{"rolename": ADMIN_ROLE}],
                **_password_fields(hashes[ADMIN_USER]),
            }
        )
    devices = read_devices(files)
    for device_id in devices:
        check_device_id(device_id)
        clients.append(device_client(device_id, hashes.get(device_id, "")))
    config = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": [control_role(), admin_role(), *(device_role(d) for d in devices)],
    }
    return json.dumps(config, indent=1).encode()


class DynsecAdmin:
    """Commands to a running broker's dynamic-security plugin, as ``cp-admin``.

    One short MQTT session per call on the loopback admin listener: subscribe to the
    response topic, publish the commands with correlation data, wait for the answer.
    """

    def __init__(self, admin: Admin, *, timeout: float = ADMIN_TIMEOUT_S):
        self.admin = admin
        self.timeout = timeout

    def run(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send ``commands`` in one message; their responses, in order.

        ``BrokerError`` when the broker cannot be reached or does not answer in time.
        """
        tag = secrets.token_hex(8)
        tagged = [{**c, "correlationData": f"{tag}-{i}"} for i, c in enumerate(commands)]
        answers: queue.Queue[list[dict[str, Any]]] = queue.Queue()

        def on_response(message: Incoming) -> None:
            try:
                responses = json.loads(message.payload)["responses"]
            except (ValueError, KeyError, TypeError):
                return
            mine = [r for r in responses if str(r.get("correlationData", "")).startswith(tag)]
            if mine:
                answers.put(mine)

        link = MqttLink(
            client_id=f"{ADMIN_USER}-{secrets.token_hex(4)}",
            broker=BrokerAddress(self.admin.host, self.admin.port),
            username=self.admin.username,
            password=self.admin.password,
            clean_start=True,
            session_expiry=0,
        )
        link.subscribe(DYNSEC_RESPONSE_TOPIC, on_response)
        with _ADMIN_LOCK:
            return self._exchange(link, tagged, answers)

    def _exchange(
        self,
        link: MqttLink,
        tagged: list[dict[str, Any]],
        answers: queue.Queue[list[dict[str, Any]]],
    ) -> list[dict[str, Any]]:
        link.start()
        try:
            if not link.wait_subscribed(self.timeout):
                raise BrokerError(f"admin listener on port {self.admin.port} refused cp-admin")
            link.publish(DYNSEC_TOPIC, json.dumps({"commands": tagged}).encode(), wait=self.timeout)
            try:
                return answers.get(timeout=self.timeout)
            except queue.Empty:
                raise BrokerError("the dynamic-security plugin did not answer") from None
        except TransportError as e:
            raise BrokerError(f"cannot send commands to the broker: {e}") from e
        finally:
            link.stop()

    def put_device(self, device_id: str, *, password: str | None = None) -> None:
        """Create (or re-create) ``device_id``'s client and role; ``password`` or a certificate."""
        client: dict[str, Any] = {"command": "createClient", **device_client(device_id)}
        if password is not None:
            client["password"] = password
        self._check(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_id},
                {"command": "createRole", **device_role(device_id)},
                client,
            ]
        )

    def remove_device(self, device_id: str) -> None:
        """Delete ``device_id``'s client (the broker closes its live connection) and role."""
        self._check(
            [
                {"command": "deleteClient", "username": device_id},
                {"command": "deleteRole", "rolename": device_id},
            ]
        )

    def _check(self, commands: list[dict[str, Any]]) -> None:
        for command, response in zip(commands, self.run(commands), strict=True):
            error = response.get("error")
            if error and not (command["command"].startswith("delete") and error in _ABSENT):
                raise BrokerError(f"broker refused {command['command']}: {error}")


def update_broker_device(
    files: BrokerAuthFiles, device_id: str, *, revoked: bool = False, password: str | None = None
) -> bool:
    """Apply one enrolment or revocation to the running broker; False when it has no admin
    listener known here (a broker managed elsewhere: it learns at its next start)."""
    check_device_id(device_id)
    admin = read_admin(files)
    if admin is None:
        logger.warning(
            "no broker admin listener; the broker applies device_id=%s at its next start",
            device_id,
        )
        return False
    client = DynsecAdmin(admin)
    if revoked:
        client.remove_device(device_id)
        logger.warning("broker client removed, live session closed device_id=%s", device_id)
    else:
        client.put_device(device_id, password=password)
        logger.info("broker client created device_id=%s", device_id)
    return True
