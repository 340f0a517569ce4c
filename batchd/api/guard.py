"""What a browser on the same host must not be able to do to the API.

A web page can send simple cross-origin requests (``no-cors``: a POST with a
``text/plain`` body, or a form) to a loopback API, and a DNS-rebinding page
can even read the answers, because it talks to 127.0.0.1 under its own host
name. ``RequestGuard`` refuses, before the token check or any handler runs:

* a ``Host`` that is not the listen address, ``localhost``, a loopback
  literal or a name in ``api.allowed_hosts`` (403, ``forbidden_host``);
* an ``Origin`` that is not this API's own origin (scheme, host and port:
  ``http://localhost:9999`` is another origin than ``http://localhost:8080``),
  and ``Sec-Fetch-Site: cross-site`` or ``same-site`` (403, ``cross_site_request``);
* a request body that is not ``application/json`` (``multipart/form-data``
  on ``POST /v1/files``) (415, ``unsupported_media_type``): the content types
  a page can send without a CORS preflight never reach a handler.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from batchd.api.models import error_body

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_WILDCARDS = ("0.0.0.0", "::", "")
_BODY_METHODS = (b"POST", b"PUT", b"PATCH")


_DEFAULT_PORTS = {"http": 80, "https": 443}


def split_port(value: str, scheme: str) -> int | None:
    """The port of ``host[:port]`` / ``[v6][:port]``, else the scheme's default; None when malformed."""
    value = value.strip()
    tail = value[value.find("]") + 1 :] if value.startswith("[") else value
    if value.startswith("[") or tail.count(":") == 1:
        _, sep, port = tail.rpartition(":")
        if sep:
            return int(port) if port.isdigit() else None
    return _DEFAULT_PORTS.get(scheme)


def split_host(value: str) -> str:
    """``host[:port]`` or ``[v6][:port]`` → the host, lower case, without brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value  # a bare IPv6 literal or a plain name


class RequestGuard:
    def __init__(self, app: ASGIApp, *, listen_host: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.listen_host = listen_host.strip("[]").lower()
        self.allowed = {*_LOOPBACK_NAMES, self.listen_host, *(h.strip().lower() for h in allowed_hosts)}
        self.any_host = "*" in self.allowed

    def host_ok(self, host: str) -> bool:
        if self.any_host or host in self.allowed:
            return True
        if self.listen_host in _WILDCARDS:  # bound to every interface: any address literal is one of ours
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False

    def same_origin(self, origin: str, host: bytes | None, scope: Scope) -> bool:
        """``Origin`` is this API's own: scheme, host (one it answers to) and port all match the request's."""
        parsed = urlsplit(origin)
        scheme = str(scope.get("scheme") or "http")
        if parsed.scheme != scheme or not self.host_ok((parsed.hostname or "").lower()):
            return False
        try:
            origin_port = parsed.port or _DEFAULT_PORTS[scheme]
        except ValueError:
            return False
        if host is not None:
            text = host.decode("latin-1")
            return split_host(text) == (parsed.hostname or "").lower() and split_port(text, scheme) == origin_port
        server = scope.get("server")
        return server is not None and origin_port == server[1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.refusal(scope)
        if refusal is not None:
            status, code, message = refusal
            await JSONResponse(error_body(message, type_="invalid_request_error", code=code), status_code=status)(
                scope, receive, send
            )
            return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        headers: dict[bytes, bytes] = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.lower(), v)
        host = headers.get(b"host")
        if host is not None and not self.host_ok(split_host(host.decode("latin-1"))):
            return (
                403,
                "forbidden_host",
                ("Host header names no address this API answers to (add the name to api.allowed_hosts if it is yours)"),
            )
        site = headers.get(b"sec-fetch-site", b"").lower()
        if site in (b"cross-site", b"same-site"):
            return 403, "cross_site_request", "cross-site requests are refused"
        origin = headers.get(b"origin")
        if origin is not None and not self.same_origin(origin.decode("latin-1"), host, scope):
            return 403, "cross_site_request", "requests from another origin are refused"
        if scope.get("method", "").encode() in _BODY_METHODS and _has_body(headers):
            media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
            want = b"multipart/form-data" if scope.get("path") == "/v1/files" else b"application/json"
            if media != want:
                return 415, "unsupported_media_type", f"Content-Type must be {want.decode()}"
        return None


def _has_body(headers: dict[bytes, bytes]) -> bool:
    if b"transfer-encoding" in headers:
        return True
    length = headers.get(b"content-length")
    return length is not None and length.strip() not in (b"", b"0")
