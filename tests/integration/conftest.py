"""Fixtures of the integration tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from batchd.config import Settings
from tests.support.api import ApiHarness, free_port
from tests.support.sdk import TOKEN


@pytest.fixture
def batchd_api(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., ApiHarness]]:
    """Factory: the daemon (``Daemon.run()``) + API with a token, started; stopped after the test."""
    started: list[ApiHarness] = []

    def start(**overrides: Any) -> ApiHarness:
        settings = make_settings(
            api={"listen": f"127.0.0.1:{free_port()}", "token": TOKEN}, watch={"mode": "poll"}, **overrides
        )
        h = ApiHarness(settings, daemon=True)
        started.append(h)
        return h.start()

    yield start
    for h in started:
        h.close()
