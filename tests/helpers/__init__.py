"""Helpers the tests import: tiny models and data (``tiny``), host-sync counting
(``host_syncs``), the resume job (``resume_job``), accumulation cases and the fault campaign;
and the plugin that gives each test the environment it started with (``environment_guard``).

The ``tests`` folder is on ``sys.path`` under pytest (its ``conftest.py`` puts it there), so
tests import them as ``from helpers.tiny import make_trainer``.
"""
