"""Logging, configured once: journald under systemd, JSON lines or console otherwise.

Events have stable snake_case names (``job_claimed``, ``request_failed``);
journald gets every key as an UPPERCASE field (lowercase ones are dropped by
journald), with ``EVENT`` holding the event name.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any, TextIO

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "critical": 2, "exception": 3}
_FIELD = re.compile(r"[^A-Z0-9_]")


def journal_fields(event_dict: dict[str, Any]) -> tuple[str, int, dict[str, str]]:
    """(MESSAGE, PRIORITY, UPPERCASE fields) for one event; pure, so it is testable."""
    ev = dict(event_dict)
    event = str(ev.pop("event", ""))
    level = str(ev.pop("level", "info"))
    ev.pop("timestamp", None)
    fields = {"EVENT": event}
    for key, value in ev.items():
        name = _FIELD.sub("_", key.upper()).lstrip("_") or "FIELD"
        if name[0].isdigit():
            name = "F_" + name
        fields[name] = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    detail = " ".join(f"{k}={v}" for k, v in ev.items() if k in ("input", "job_id", "status", "error", "reason"))
    message = f"{event} {detail}".strip()
    return message, _PRIORITY.get(level, 6), fields


class _JournaldRenderer:
    def __init__(self) -> None:
        from systemd import journal  # type: ignore[import-not-found]

        self._send = journal.send

    def __call__(self, logger: Any, name: str, event_dict: dict[str, Any]) -> str:
        message, priority, fields = journal_fields(event_dict)
        self._send(message, PRIORITY=priority, SYSLOG_IDENTIFIER="batchd", **fields)
        raise structlog.DropEvent


def _json_renderer(logger: Any, name: str, event_dict: dict[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


def configure(*, target: str = "auto", level: str = "info", under_journal: bool = False,
              stream: TextIO | None = None) -> str:
    """Set up structlog for the process; returns the target actually used."""
    stream = stream or sys.stderr
    if target == "auto":
        target = "journald" if under_journal else ("console" if stream.isatty() else "json")
    renderer: Any
    if target == "journald":
        try:
            renderer = _JournaldRenderer()
        except ImportError:
            # Without systemd-python, stderr still reaches the journal (as plain lines).
            target, renderer = "json", _json_renderer
    elif target == "json":
        renderer = _json_renderer
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    return target
