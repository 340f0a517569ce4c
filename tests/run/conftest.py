"""Fixtures of the runner tests: ``make_runner``, the one way these tests build and run a ``JobRunner``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.runs import RunnerFactory


@pytest.fixture
def make_runner() -> Iterator[RunnerFactory]:
    """Factory: ``make_runner(settings, journal, job_or_n)`` builds one on the running loop, ``.run(...)`` and
    ``.run_job(settings, n)`` run one to its outcome; backends and journals it opened are closed after."""
    factory = RunnerFactory()
    try:
        yield factory
    finally:
        factory.close()
