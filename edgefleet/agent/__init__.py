"""The edgefleet device agent: installs signed bundles and serves local inference.

Light on purpose: it depends on the shared contract (``edgefleet``, on msgspec),
numpy, paho-mqtt and one model runtime, and never on the control plane's web or
database stack; python-tuf and cryptography load only in the short-lived verify
worker (``edgefleet.agent.verification.verifier``) and for enrolment.
"""

__version__ = "0.1.0"
