"""Plain functions shared by the tests (fixtures live in the conftest.py files).

``tests/`` is on ``sys.path`` (pyproject's ``pythonpath``), so a test imports them as
``from helpers.train import tiny_config``.
"""
