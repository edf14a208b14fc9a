"""edgefleet's tests, laid out like the code they test.

- ``unit/``: no broker, no processes. ``contract/`` tests the shared ``edgefleet``
  modules (bundle, messages, topics, profile, schema, tensors, drift, supervisor);
  ``agent/``, ``control_plane/<subpackage>/`` and ``converters/`` mirror their packages.
- ``integration/``: a real Mosquitto per test (and PostgreSQL where a test asks for
  ``pg_url``). ``agent/`` and ``control_plane/`` test one side against the broker;
  ``broker/`` the broker configuration the control plane generates; ``contract/`` the
  MQTT link; ``fleet/`` the control plane and real agent processes together.
- ``e2e/``: whole processes, faults and attacks.
- ``support/``: helpers imported by name (``tests.support.polling.wait_until``, the
  one way a test waits).

Fixtures are in ``conftest.py`` files: ``tests/conftest.py`` has the broker, the
session's trained ``digits`` model and the ``control_plane`` factory.
"""
