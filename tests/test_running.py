"""tests/support/running.batchd_env: the one ``BATCHD_*`` environment the tests and benchmarks give a subprocess."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.factories import Folders
from tests.support.running import batchd_env


def test_the_environment_drops_inherited_batchd_settings_and_names_the_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHD_BACKEND__KIND", "openai")  # an operator's shell must not leak into a test
    monkeypatch.setenv("KEPT_FOR_THE_CHILD", "yes")
    env = batchd_env(tmp_path, "http://127.0.0.1:9", BATCHD_BACKEND__LANES="3")
    assert "BATCHD_BACKEND__KIND" not in env and env["KEPT_FOR_THE_CHILD"] == "yes"
    assert env["BATCHD_INBOX"] == str(tmp_path / "inbox") and env["BATCHD_OUTBOX"] == str(tmp_path / "outbox")
    assert env["BATCHD_STATE_DIR"] == str(tmp_path / "state")
    assert env["BATCHD_CONFIG"] == str(tmp_path / "batchd.toml")
    assert env["BATCHD_BACKEND__URL"] == "http://127.0.0.1:9" and env["BATCHD_LOG__TARGET"] == "json"
    assert env["BATCHD_BACKEND__LANES"] == "3"


def test_a_tests_subprocess_gets_fast_retries_and_pinned_lanes_unless_it_asks(tmp_path: Path) -> None:
    folders = Folders.under(tmp_path)
    env = folders.env("http://127.0.0.1:9")
    assert env["BATCHD_BACKEND__LANES"] == "1" and env["BATCHD_BACKEND__BACKOFF_SECONDS"] == "0.05"
    assert env["BATCHD_INBOX"] == str(folders.inbox) and folders.inbox.is_dir()
    assert folders.env("http://127.0.0.1:9", BATCHD_BACKEND__LANES="auto")["BATCHD_BACKEND__LANES"] == "auto"
