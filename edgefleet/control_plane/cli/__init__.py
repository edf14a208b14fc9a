"""The ``edgefleet`` command line, one module per concern.

``main`` builds the root command; ``serve`` runs the control plane (``up`` through
:mod:`edgefleet.control_plane.local_stack`); ``demo`` runs the demo package;
``bundles``, ``devices``, ``rollouts``, ``drift``, ``trust`` and ``tokens`` hold the
command groups that drive a running control plane through
:class:`~edgefleet.control_plane.client.ApiClient`. ``output`` turns API errors into
one error line and exit code 1; ``options`` holds the options they share.
"""
