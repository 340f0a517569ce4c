"""Issue 22 item 9: the API's Origin check compares scheme, host and port, not the host alone."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("fastapi")

from batchd.api.guard import RequestGuard  # noqa: E402


def _scope(origin: str, host: str | None = "localhost:8080", scheme: str = "http") -> dict[str, Any]:
    headers = [(b"origin", origin.encode())]
    if host is not None:
        headers.append((b"host", host.encode()))
    return {
        "type": "http",
        "method": "GET",
        "path": "/v1/batches",
        "scheme": scheme,
        "headers": headers,
        "server": ("127.0.0.1", 8080),
    }


GUARD = RequestGuard(app=None, listen_host="127.0.0.1", allowed_hosts=["batchd.example"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:9999", "localhost:8080", "http"),  # another port on this host: another origin
        ("http://localhost", "localhost:8080", "http"),
        ("https://localhost:8080", "localhost:8080", "http"),  # another scheme
        ("http://127.0.0.1:8080", "localhost:8080", "http"),  # another host name, though both are loopback
        ("http://localhost:9999", None, "http"),
        ("http://evil.example:8080", "localhost:8080", "http"),
        ("null", "localhost:8080", "http"),
    ],
)
def test_another_origin_is_refused(origin: str, host: str | None, scheme: str) -> None:
    refusal = GUARD.refusal(_scope(origin, host, scheme))
    assert refusal is not None and refusal[1] == "cross_site_request", (origin, host)


@pytest.mark.parametrize(
    ("origin", "host", "scheme"),
    [
        ("http://localhost:8080", "localhost:8080", "http"),
        ("http://127.0.0.1:8080", None, "http"),
        ("https://batchd.example", "batchd.example", "https"),  # a TLS proxy in front (X-Forwarded-Proto)
        ("http://[::1]:8080", "[::1]:8080", "http"),
    ],
)
def test_the_apis_own_origin_passes(origin: str, host: str | None, scheme: str) -> None:
    assert GUARD.refusal(_scope(origin, host, scheme)) is None
