"""The ``host:port`` a listener is given (the HTTP API, the Prometheus endpoint), read one way."""

from __future__ import annotations

from batchd.errors import ConfigError

#: where a listener given only a port binds: loopback, never every interface by accident
DEFAULT_HOST = "127.0.0.1"


def split_host_port(text: str, *, key: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` (loopback); ConfigError naming ``key`` otherwise."""
    listen = text.strip()
    host, sep, port_text = listen.rpartition(":")
    if not sep:
        host, port_text = "", listen
    host = host.strip("[]") or DEFAULT_HOST
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(key, f"{text!r} is not host:port") from None
    if not 0 <= port <= 65535:
        raise ConfigError(key, f"port {port} is out of range")
    return host, port
