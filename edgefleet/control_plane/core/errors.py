"""Errors of the control plane.

::

    ControlPlaneError
    ├── NotFoundError       a model, bundle, device or rollout that does not exist
    ├── ConflictError       a request that clashes with existing state (duplicate version)
    ├── InvalidRequestError a request that is well-formed but cannot be carried out
    ├── BuildError          a bundle could not be built (bad model, failed gate)
    ├── BrokerError         the MQTT broker could not be started or reached
    └── DeviceTimeoutError  a device did not answer in time (offline, or silent)

API routes translate them to 404 / 409 / 422 / 422 / 503 / 504 with the message as reason.
"""

from __future__ import annotations


class ControlPlaneError(Exception):
    """Base class of control-plane errors."""


class NotFoundError(ControlPlaneError):
    pass


class ConflictError(ControlPlaneError):
    pass


class InvalidRequestError(ControlPlaneError):
    pass


class BuildError(ControlPlaneError):
    pass


class BrokerError(ControlPlaneError):
    pass


class DeviceTimeoutError(ControlPlaneError):
    def __init__(self, message: str, *, device_id: str) -> None:
        super().__init__(message)
        self.device_id = device_id
