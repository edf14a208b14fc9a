"""The contract the device agent and the control plane share.

Bundle format, wire messages, MQTT topics, tensor encoding and firmware-profile
schema. This package imports neither ``agent`` nor ``control_plane``.
"""

__version__ = "0.1.0"
