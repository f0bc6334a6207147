"""Helpers shared by the test directories (cases, reference checks, tiny configs); importable
as ``support.<area>`` because setup.cfg puts ``tests/`` on pytest's ``pythonpath``. Fixtures
live in the ``conftest.py`` of the directory that uses them."""
