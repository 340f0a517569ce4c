"""Fixtures shared by every test folder: thin wrappers over tests/support (factories with fast defaults; each
cleans up after itself). Helpers are imported from tests/support, never from here."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from batchd.config import Settings
from tests.support.emulator import Emulator
from tests.support.factories import Folders, settings_for

if TYPE_CHECKING:
    from tests.support.api import ApiHarness


@pytest.fixture
def folders(tmp_path: Path) -> Folders:
    return Folders.under(tmp_path)


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    emu = Emulator()
    emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def make_settings(folders: Folders, emulator: Emulator) -> Callable[..., Settings]:
    """Settings for in-process tests: temp folders, the emulator, fast backoff."""

    def make(**overrides: Any) -> Settings:
        return settings_for(folders, emulator.url, **overrides)

    return make


@pytest.fixture
def api_with(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., ApiHarness]]:
    """Factory: the API alone (no daemon) on a free loopback port, with extra ``[api]`` settings."""
    pytest.importorskip("fastapi")
    from tests.support.api import ApiHarness, free_port

    started: list[ApiHarness] = []

    def start(**api: Any) -> ApiHarness:
        h = ApiHarness(make_settings(api={"listen": f"127.0.0.1:{free_port()}", **api}), daemon=False)
        started.append(h)
        return h.start()

    yield start
    for h in started:
        h.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests against the real llama-server run last: `make test` builds it in the background meanwhile."""
    items.sort(key=lambda item: item.get_closest_marker("llama_server") is not None)
