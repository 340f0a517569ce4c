"""Fixtures of the API tests: the API (and, when asked, the daemon) started on a free loopback port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from batchd.config import Settings

if TYPE_CHECKING:
    from tests.support.api import ApiHarness


@pytest.fixture
def start_api(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., ApiHarness]]:
    """Factory: ``start_api(token=..., daemon=..., **settings)`` → a started harness."""
    pytest.importorskip("fastapi")
    from tests.support.api import ApiHarness, free_port

    started: list[ApiHarness] = []

    def start(
        *, token: str | None = None, daemon: bool = False, max_upload_bytes: int = 1 << 20, **overrides: Any
    ) -> ApiHarness:
        api = {"listen": f"127.0.0.1:{free_port()}", "token": token, "max_upload_bytes": max_upload_bytes}
        h = ApiHarness(make_settings(api=api, **overrides), daemon=daemon)
        started.append(h)
        return h.start()

    yield start
    for h in started:
        h.close()
