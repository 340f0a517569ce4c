"""``batchd doctor`` judges the configuration exactly as ``batchd run`` does."""

from __future__ import annotations

import pytest

from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.running import run_batchd


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"BATCHD_API__LISTEN": "nonsense"}, "api.listen"),
        ({"BATCHD_API__LISTEN": "127.0.0.1:99999"}, "api.listen"),
        ({"BATCHD_API__LISTEN": "0.0.0.0:8089"}, "api.token"),  # exposed without a token
        (
            {"BATCHD_BACKEND__KIND": "openai", "BATCHD_BACKEND__API_KEY_FILE": "/nonexistent/key"},
            "backend.api_key_file",
        ),
    ],
)
def test_doctor_fails_where_run_refuses_to_start(
    folders: Folders, emulator: Emulator, extra: dict[str, str], key: str
) -> None:
    env = folders.env(emulator.url, **extra)
    run = run_batchd(env, "run", timeout=30)
    assert run.returncode == 2, run.stderr
    assert f"batchd: configuration error: {key}: " in run.stderr
    doctor = run_batchd(env, "doctor", timeout=60)
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert "OK   configuration is valid" not in lines
    fail = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL configuration: {key}: "))
    assert lines[fail + 1].startswith("     fix: ")
    # The problem is the same sentence run printed.
    assert lines[fail].removeprefix("FAIL configuration: ") in run.stderr
    # The other checks still run, so one doctor call shows everything.
    assert any(line.startswith("OK   inbox ") for line in lines)


def test_doctor_passes_a_valid_api_setting(folders: Folders, emulator: Emulator) -> None:
    env = folders.env(emulator.url, BATCHD_API__LISTEN="127.0.0.1:0")
    doctor = run_batchd(env, "doctor", timeout=60)
    assert "OK   configuration is valid" in doctor.stdout.splitlines(), doctor.stdout
