"""The service's effective settings, recorded for the operator commands run from a shell.

Settings given to the unit (``systemctl edit batchd``: ``Environment=``,
``EnvironmentFile=``) reach the daemon but not a shell. So the daemon writes
what it runs with to ``<state_dir>/effective-settings.json`` at start and after
each reload, minus secrets (API keys, tokens, passwords in URLs). ``batchd
doctor``, ``status``, ``cancel`` and ``retry`` start from that record when the
shell names no configuration of its own (``--config``, ``BATCHD_*``); the
secrets come back from the usual sources (the TOML file, the environment), as
deep-merged pydantic-settings sources. ``doctor`` says which one it used.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from batchd import __version__
from batchd.config import Settings, config_path, load_settings
from batchd.errors import ConfigError
from batchd.redact import redact_url

log = structlog.get_logger("batchd.effective")

FILE_NAME = "effective-settings.json"
#: a key whose value is a secret, whatever section it is in (``api_key_file`` is a path: kept).
#: Narrower than ``redact.looks_secret``: a dropped key is one the service's record cannot give back.
_SECRET_KEY = re.compile(r"(^|_)(api_key|token|password|secret)$")


@dataclass(frozen=True)
class Loaded:
    """Settings for an operator command, and the one-line story of where they came from."""

    settings: Settings
    source: str


def record_path(settings: Settings) -> Path:
    return settings.state_dir / FILE_NAME


def redact(value: Any) -> Any:
    """The settings dump without secrets: secret keys dropped, URL credentials hidden (``***@``)."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items() if not (_SECRET_KEY.search(k) and isinstance(v, str))}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "@" in value and "://" in value:
        return redact_url(value)
    return value


def write_record(
    settings: Settings, *, config: Path | None, pid: int | None = None, unit_state_dir: Path | None = None
) -> Path | None:
    """Write the record atomically (readable by the daemon's group only); None when the state dir refuses.

    ``unit_state_dir`` is the unit's ``StateDirectory=`` (``$STATE_DIRECTORY``): a drop-in that moves
    ``state_dir`` elsewhere leaves the shell's settings naming the unit's folder, so the record goes
    there too and the operator's commands still find it (and, in it, the moved folder)."""
    path = record_path(settings)
    if not _write(path, _body(settings, config, pid)):
        return None
    if unit_state_dir is not None and unit_state_dir.resolve() != settings.state_dir.resolve():
        _write(unit_state_dir / FILE_NAME, path.read_bytes())
    return path


def _body(settings: Settings, config: Path | None, pid: int | None) -> bytes:
    body = {
        "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "pid": pid or os.getpid(),
        "version": __version__,
        "config_file": str(config_path(config)),
        "settings": redact(settings.model_dump(mode="json")),
    }
    return orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n"


def _write(path: Path, data: bytes) -> bool:
    tmp = path.with_name(f".{FILE_NAME}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o640)
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("effective_settings_not_written", path=str(path), error=str(exc))
        return False
    return True


def _explicit(config: Path | None, environ: Mapping[str, str]) -> bool:
    return config is not None or any(k.startswith("BATCHD_") for k in environ)


def _restore(recorded: Any, local: Any) -> Any:
    """Put back the URLs whose password the record hides, where the local settings have the same URL."""
    if isinstance(recorded, dict) and isinstance(local, dict):
        return {k: _restore(v, local.get(k)) for k, v in recorded.items()}
    if isinstance(recorded, list) and isinstance(local, list):
        return [_restore(r, lo) for r, lo in zip(recorded, local)] + recorded[len(local) :]
    if isinstance(recorded, str) and isinstance(local, str) and "***@" in recorded:
        return local if redact(local) == recorded else recorded
    return recorded


def load_for_operator(config: Path | None = None, environ: Mapping[str, str] | None = None) -> Loaded:
    """Settings for ``doctor``/``status``/``cancel``/``retry``: the service's when the shell names none."""
    environ = os.environ if environ is None else environ
    local = load_settings(config=config)
    here = f"{config_path(config)} + environment"
    if _explicit(config, environ):
        return Loaded(local, here)
    path = record_path(local)
    try:
        record = orjson.loads(path.read_bytes())
        recorded = record["settings"]
    except FileNotFoundError:
        return Loaded(local, f"{here} (the service has not recorded its settings in {path})")
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        return Loaded(local, f"{here} (cannot read the service's {path}: {why})")
    try:
        merged = load_settings(config=config, **_restore(recorded, local.model_dump(mode="json")))
    except ConfigError as exc:  # a record from another batchd version
        return Loaded(local, f"{here} (the service's {path} does not fit: {exc.key}: {exc.problem})")
    written = f"written {record.get('written_at', '?')} by pid {record.get('pid', '?')}"
    return Loaded(merged, f"service's effective settings from {path} ({written})")
