"""What tests share besides fixtures, imported by name (``from tests.support.polling import
wait_until``): the repository root is on ``sys.path`` through pytest's ``pythonpath``.

Fixtures live in the ``conftest.py`` files; these modules hold the plain functions and
classes the fixtures and tests build on.
"""
