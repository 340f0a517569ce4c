"""Where the API listens, and whether that address may go without a token.

No FastAPI import here: the daemon and ``batchd doctor`` check the setting
(exit 2 on a bad one) whether or not the ``api`` extra is installed.
"""

from __future__ import annotations

import importlib.util
import ipaddress

from batchd.addr import split_host_port
from batchd.config import Settings
from batchd.errors import ConfigError

#: a guessable token on an address other hosts reach is no token
MIN_TOKEN_CHARS = 16


def check_listen(settings: Settings) -> tuple[str, int]:
    """``api.listen`` as (host, port); ConfigError when it is malformed, or not loopback and no token.

    Call it at start-up so a bad setting stops ``batchd run`` with exit 2.
    Accepted: ``host:port``, ``[v6]:port``, ``:port`` or ``port`` (loopback).
    """
    listen = (settings.api.listen or "").strip()
    host, port = split_host_port(listen, key="api.listen")
    token = settings.api.token
    if token is not None and not token.strip():
        raise ConfigError("api.token", "is blank: no client could ever match it; remove it or set a real token")
    if not is_loopback(host) and not token:
        raise ConfigError(
            "api.token",
            f"api.listen {listen!r} is not a loopback address: set api.token "
            "(BATCHD_API__TOKEN) so clients must authenticate",
        )
    if not is_loopback(host) and token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        raise ConfigError(
            "api.token",
            f"is {len(token.strip())} characters; a token for a non-loopback "
            f"api.listen needs at least {MIN_TOKEN_CHARS} (e.g. openssl rand -hex 24)",
        )
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere: treat it as exposed


def ensure_installed() -> None:
    """ConfigError when ``api.listen`` is set but the ``api`` extra is missing."""
    missing = [m for m in ("fastapi", "uvicorn", "python_multipart") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            "api.listen",
            f"the HTTP API needs the 'api' extra (pip install 'batchd[api]'); missing: {', '.join(missing)}",
        )
