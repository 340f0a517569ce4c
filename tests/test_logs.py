"""Logging: UPPERCASE journald fields, the native journal protocol, JSON lines.

journald itself is exercised in tests/system/test_service_e2e.py
(``journalctl -u batchd JOB_ID=<id>`` inside a real systemd); here a datagram
socket stands in for ``/run/systemd/journal/socket``.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import structlog

from batchd import logs


def parse_native(data: bytes) -> dict[str, str]:
    """journald's side of the native protocol: ``K=v\\n`` or ``K\\n<u64 le length><bytes>\\n``."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, value = line.split(b"=", 1)
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack("<Q", data[nl + 1 : nl + 9])
            value = data[nl + 9 : nl + 9 + size]
            assert data[nl + 9 + size : nl + 10 + size] == b"\n"
            i = nl + 10 + size
        out[key.decode()] = value.decode()
    return out


@pytest.fixture
def journal_socket() -> Iterator[tuple[str, socket.socket]]:
    folder = tempfile.mkdtemp(prefix="journal-")  # short: AF_UNIX paths stop at 108 bytes
    path = f"{folder}/socket"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield path, sock
    finally:
        sock.close()
        shutil.rmtree(folder, ignore_errors=True)
        structlog.reset_defaults()
        structlog.contextvars.clear_contextvars()


def test_journal_fields_are_uppercase_with_event_and_priority() -> None:
    message, priority, fields = logs.journal_fields(
        {
            "event": "request_failed",
            "level": "warning",
            "timestamp": "t",
            "job_id": "abc123",
            "custom_id": "row 7",
            "attempts": 3,
            "req/s": 2.5,
            "message": "clash",
            "priority": "clash",
            "_hidden": 1,
            "2x": True,
            "detail": {"a": [1, 2]},
            "none": None,
        }
    )
    assert priority == 4
    assert fields == {
        "EVENT": "request_failed",
        "JOB_ID": "abc123",
        "CUSTOM_ID": "row 7",
        "ATTEMPTS": "3",
        "REQ_S": "2.5",
        "BATCHD_MESSAGE": "clash",
        "BATCHD_PRIORITY": "clash",
        "HIDDEN": "1",
        "F_2X": "true",
        "DETAIL": '{"a":[1,2]}',
    }
    assert all(k == k.upper() and not k.startswith("_") for k in fields)
    assert message.startswith('request_failed job_id=abc123 custom_id="row 7" attempts=3')
    assert "none=" not in message
    assert logs.journal_fields({"event": "x", "level": "error"})[1] == 3
    assert logs.journal_fields({"event": "x", "level": "debug"})[1] == 7
    assert logs.journal_fields({"event": "x"})[1] == 6


def test_native_datagram_round_trips_multiline_values() -> None:
    data = logs.native_datagram(
        "boom\nTraceback ...",
        3,
        {"EVENT": "heartbeat_failed", "JOB_ID": "j1", "EXCEPTION": "line 1\nline 2", "EMPTY": ""},
    )
    parsed = parse_native(data)
    assert parsed == {
        "MESSAGE": "boom\nTraceback ...",
        "PRIORITY": "3",
        "SYSLOG_IDENTIFIER": "batchd",
        "EVENT": "heartbeat_failed",
        "JOB_ID": "j1",
        "EXCEPTION": "line 1\nline 2",
        "EMPTY": "",
    }


def test_journald_target_sends_bound_job_context(journal_socket: tuple[str, socket.socket]) -> None:
    path, sock = journal_socket
    stream = io.StringIO()
    target = logs.configure(target="journald", stream=stream, journal_send=logs.NativeJournal(path))
    assert target == "journald"
    log = structlog.get_logger("t")
    structlog.contextvars.bind_contextvars(job_id="job42", input="candidates.csv")
    log.info("job_started", requests=170_000, lanes=4)
    entry = parse_native(sock.recv(65536))
    assert entry["EVENT"] == "job_started" and entry["PRIORITY"] == "6"
    assert (entry["JOB_ID"], entry["INPUT"], entry["REQUESTS"], entry["LANES"]) == (
        "job42",
        "candidates.csv",
        "170000",
        "4",
    )
    assert entry["MESSAGE"].startswith("job_started job_id=job42 input=candidates.csv")
    try:
        raise ValueError("bad thing")
    except ValueError:
        log.exception("heartbeat_failed")
    entry = parse_native(sock.recv(65536))
    assert entry["PRIORITY"] == "3"
    assert "ValueError: bad thing" in entry["EXCEPTION"]
    assert "Traceback" in entry["MESSAGE"]
    assert stream.getvalue() == ""  # nothing printed: it all went to the journal


def test_journal_refusing_an_entry_falls_back_to_stderr(tmp_path: Path) -> None:
    stream = io.StringIO()
    logs.configure(target="journald", stream=stream, journal_send=logs.NativeJournal(str(tmp_path / "none")))
    try:
        structlog.get_logger("t").warning("vram_pressure", used=0.95)
    finally:
        structlog.reset_defaults()
    line = orjson.loads(stream.getvalue())
    assert line["event"] == "vram_pressure" and line["level"] == "warning" and line["used"] == 0.95


def test_json_target_prints_one_line_per_event_with_tracebacks() -> None:
    stream = io.StringIO()
    assert logs.configure(target="auto", stream=stream) == "json"  # not a TTY, not under journald
    try:
        log = structlog.get_logger("t")
        log.debug("hidden")
        try:
            _ = 1 / 0
        except ZeroDivisionError:
            log.exception("claim_failed", input="a.csv")
    finally:
        structlog.reset_defaults()
    (line,) = stream.getvalue().splitlines()
    ev = orjson.loads(line)
    assert ev["event"] == "claim_failed" and ev["input"] == "a.csv" and "ZeroDivisionError" in ev["exception"]


def test_auto_picks_journald_only_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    f = (tmp_path / "stream").open("w")
    st = os.fstat(f.fileno())
    assert logs.stderr_is_journal(f"{st.st_dev}:{st.st_ino}", fd=f.fileno())
    assert not logs.stderr_is_journal(f"{st.st_dev}:{st.st_ino + 1}", fd=f.fileno())
    assert not logs.stderr_is_journal("garbage", fd=f.fileno())
    assert not logs.stderr_is_journal(None)
    f.close()
