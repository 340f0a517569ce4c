"""Logging, configured once: journald under systemd, JSON lines or console otherwise.

Events have stable snake_case names (``job_claimed``, ``request_failed``);
journald gets every key as an UPPERCASE field (lowercase ones are dropped by
journald), with ``EVENT`` holding the event name and ``PRIORITY`` the level,
so ``journalctl -u batchd JOB_ID=<id>`` tells one job's story.

Entries go through systemd-python's ``journal.send`` when it is installed and
otherwise straight to journald's native socket (the protocol is a datagram of
``KEY=value`` lines, see systemd's ``JOURNAL_NATIVE_PROTOCOL``), so structured
fields do not depend on a compiled extra.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog

from batchd.redact import escape_controls

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}
_FIELD = re.compile(r"[^A-Z0-9_]")
#: fields the sender sets itself; an event key of that name is renamed rather than clobbering them
_RESERVED = frozenset(
    {"MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "EVENT"}
)
#: keys that lead the MESSAGE text (what ``journalctl -u batchd`` shows without ``-o json``)
_FIRST = ("job_id", "input", "custom_id", "status", "code", "error", "reason")
JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "batchd"
_MAX_VALUE = 64 * 1024  # a datagram must fit the socket buffer; one field never needs more


def field_name(key: str) -> str:
    """A journald field name for an event key: ``req/s`` -> ``REQ_S``, ``message`` -> ``BATCHD_MESSAGE``."""
    name = _FIELD.sub("_", key.upper()).lstrip("_") or "FIELD"
    if name[0].isdigit():
        name = "F_" + name
    if name in _RESERVED:
        name = "BATCHD_" + name
    return name[:64]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value, default=str).decode()


def journal_fields(event_dict: dict[str, Any]) -> tuple[str, int, dict[str, str]]:
    """(MESSAGE, PRIORITY, UPPERCASE fields) for one event; pure, so it is testable."""
    ev = dict(event_dict)
    event = str(ev.pop("event", ""))
    level = str(ev.pop("level", "info"))
    ev.pop("timestamp", None)  # journald stamps entries itself
    fields = {"EVENT": event}
    for key, value in ev.items():
        if value is not None:
            fields[field_name(key)] = _text(value)
    # The short form of the entry: event name, then the keys an operator scans for, then the rest.
    keys = [k for k in _FIRST if k in ev] + [k for k in ev if k not in _FIRST and k != "exception"]
    detail = " ".join(f"{k}={_short(ev[k])}" for k in keys if ev[k] is not None)
    # One line, whatever a file name holds: newlines, escape codes and bidi characters are shown escaped.
    message = escape_controls(f"{event} {detail}".strip())
    if ev.get("exception"):
        message += "\n" + str(ev["exception"])
    return message, _PRIORITY.get(level, 6), fields


def _short(value: Any) -> str:
    text = _text(value)
    if " " in text or not text:
        text = orjson.dumps(text[:200]).decode()
    return text[:200]


def native_datagram(message: str, priority: int, fields: dict[str, str]) -> bytes:
    """One entry in journald's native protocol; values with a newline use the length-prefixed form."""
    parts = []
    items = [("MESSAGE", message), ("PRIORITY", str(priority)), ("SYSLOG_IDENTIFIER", IDENTIFIER), *fields.items()]
    for name, value in items:
        data = value.encode("utf-8", "replace")[:_MAX_VALUE]
        if b"\n" in data:
            parts.append(name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode() + b"=" + data + b"\n")
    return b"".join(parts)


class NativeJournal:
    """Sends entries to journald's socket without systemd-python."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    def __call__(self, message: str, priority: int, fields: dict[str, str]) -> None:
        self._sock.sendto(native_datagram(message, priority, fields), self.path)


def _libsystemd_sender() -> Callable[[str, int, dict[str, str]], None]:
    from systemd import journal  # type: ignore[import-not-found,import-untyped,unused-ignore]

    def send(message: str, priority: int, fields: dict[str, str]) -> None:
        # sendv, not send: send() adds CODE_FILE/LINE/FUNC, which would all name this function.
        journal.sendv(
            f"MESSAGE={message}",
            f"PRIORITY={priority}",
            f"SYSLOG_IDENTIFIER={IDENTIFIER}",
            *(f"{k}={v}" for k, v in fields.items()),
        )

    return send


class JournaldRenderer:
    """The last structlog processor under journald: sends the entry, prints nothing.

    ``send`` defaults to systemd-python, else the native socket. When journald
    refuses an entry (socket gone, entry too big) it is printed as a JSON line
    on stderr instead, which systemd still collects.
    """

    def __init__(self, send: Callable[[str, int, dict[str, str]], None] | None = None) -> None:
        if send is None:
            try:
                send = _libsystemd_sender()
            except ImportError:
                send = NativeJournal()
        self._send = send

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        message, priority, fields = journal_fields(event_dict)
        try:
            self._send(message, priority, fields)
        except OSError:
            return _json_renderer(logger, name, event_dict)  # printed by the logger, to stderr
        raise structlog.DropEvent


def _json_renderer(logger: Any, name: str, event_dict: dict[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def stderr_is_journal(journal_stream: str | None, fd: int = 2) -> bool:
    """True when ``fd`` is the stream systemd connected to journald (``$JOURNAL_STREAM`` = dev:inode).

    Comparing, not just testing the variable, keeps a child whose stderr was
    redirected (a shell pipeline started from the service) on plain output.
    """
    if not journal_stream:
        return False
    try:
        dev, ino = (int(x) for x in journal_stream.split(":"))
        st = os.fstat(fd)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def configure(
    *,
    target: str = "auto",
    level: str = "info",
    under_journal: bool = False,
    stream: TextIO | None = None,
    journal_send: Callable[[str, int, dict[str, str]], None] | None = None,
) -> str:
    """Set up structlog for the process; returns the target actually used.

    ``journal_send`` replaces the journald transport (tests).
    """
    stream = stream or sys.stderr
    if target == "auto":
        target = "journald" if under_journal else ("console" if stream.isatty() else "json")
    renderer: Any
    if target == "journald":
        try:
            renderer = JournaldRenderer(journal_send)
        except OSError:
            target, renderer = "json", _json_renderer  # no AF_UNIX socket at all: stderr still works
    elif target == "json":
        renderer = _json_renderer
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.StackInfoRenderer(),
    ]
    if target != "console":  # the console renderer prints tracebacks itself, prettier
        processors.append(structlog.processors.format_exc_info)
    processors += [structlog.processors.TimeStamper(fmt="iso", utc=True), renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return target
