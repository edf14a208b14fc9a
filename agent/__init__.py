"""The edgefleet device agent: installs signed bundles and serves local inference.

Light on purpose: it depends on the shared contract (``edgefleet``), numpy, tuf and
one model runtime, and never on the control plane's web or database stack.
"""

__version__ = "0.1.0"
