"""The HTTP client of the HTTP backends: an httpx transport on plain asyncio and h11 for ``http://``.

One job: send HTTP/1.1 requests to an LLM server with as little client CPU per
call as possible. httpx's default async transport (httpcore on anyio) spends
most of a call in lock and checkpoint machinery (encode/httpx#3215): against a
fast server that was ~70% of batchd's request phase. ``AsyncioTransport`` does
the same job on an ``asyncio.Protocol`` with h11 framing, no anyio.

What it keeps from httpcore: a keep-alive pool per (host, port) bounded by
``max_connections``; a pooled connection the server closed while idle (a
restart, an idle timeout) is retried once on a new connection instead of
failing the call; connect/read/write/pool timeouts from the request; httpx
exceptions, so ``backends.http.translate`` maps them as before. What it leaves
out: TLS, proxies, HTTP/2 and streamed responses. ``make_client`` therefore
uses it only for plain ``http://`` URLs with no proxy from the environment and
keeps httpx's default transport for the rest.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from typing import Any

import h11
import httpx

DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)


def make_client(
    base_url: str,
    *,
    timeout: httpx.Timeout,
    limits: httpx.Limits,
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The ``AsyncClient`` a backend uses: ``AsyncioTransport`` for plain http, httpx's own otherwise."""
    if transport is None and _plain_http(base_url):
        transport = AsyncioTransport(limits=limits)
    return httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits, transport=transport)


def _plain_http(url: str) -> bool:
    parsed = httpx.URL(url)
    if parsed.scheme != "http":
        return False
    # httpx would route through an environment proxy (trust_env); keep that behaviour for such setups.
    proxies = urllib.request.getproxies_environment()
    if not ({"http", "all"} & proxies.keys()):
        return True
    # In the stdlib on every platform (it reads NO_PROXY), but missing from typeshed.
    return bool(urllib.request.proxy_bypass_environment(parsed.host, proxies))  # type: ignore[attr-defined]


class _Dead(Exception):
    """The connection closed or reset before a single byte of the response arrived."""


class _Expired(Exception):
    """A read or write wait ran past its timeout."""


def _expire(fut: asyncio.Future[None], phase: str) -> None:
    if not fut.done():
        fut.set_exception(_Expired(phase))


class _Connection(asyncio.Protocol):
    """One TCP connection: its h11 state and the waits of the one request it carries at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.h11 = h11.Connection(h11.CLIENT)
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request is in flight on it
        self.received = False  # a byte of the current response has arrived
        self.eof = False  # the peer closed or reset it
        self.broken = False  # never reuse: closed, reset, or out of step
        self.closed = False  # the pool closed it (and no longer counts it)
        self.lost_exc: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:
            # Bytes nobody asked for (e.g. a 408 sent before an idle close): the stream is out of step.
            self.broken = True
            return
        self.received = True
        self.h11.receive_data(data)
        self._wake()

    def eof_received(self) -> bool:
        self.eof = self.broken = True
        self._wake()
        return False  # let asyncio close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.broken = True
        self.lost_exc = exc
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # one request
    def usable(self, now: float, expiry: float | None) -> bool:
        return (
            not self.broken
            and self.transport is not None
            and not self.transport.is_closing()
            and (expiry is None or now - self.idle_since < expiry)
        )

    async def send(self, request: httpx.Request, body: bytes, timeout: float | None) -> None:
        h = self.h11
        self.busy, self.received = True, False
        parts = [h.send(h11.Request(method=request.method, target=request.url.raw_path, headers=request.headers.raw))]
        if body:
            parts.append(h.send(h11.Data(data=body)))
        parts.append(h.send(h11.EndOfMessage()))
        if self.eof or self.transport is None or self.transport.is_closing():
            raise _Dead(self.lost_exc)
        self.transport.write(b"".join(p for p in parts if p))
        if self._paused:  # only large bodies fill the socket buffer
            self._writable = self.loop.create_future()
            handle = self.loop.call_later(timeout, _expire, self._writable, "write") if timeout else None
            try:
                await self._writable
            finally:
                self._writable = None
                if handle is not None:
                    handle.cancel()
            if self.eof and not self.received:
                raise _Dead(self.lost_exc)

    async def receive(self, timeout: float | None) -> tuple[h11.Response, bytes]:
        h = self.h11
        head: h11.Response | None = None
        chunks: list[bytes] = []
        fed_eof = False
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                if self.eof:
                    if not self.received:
                        raise _Dead(self.lost_exc)
                    if self.lost_exc is not None:
                        raise httpx.ReadError(f"connection lost mid-response: {self.lost_exc}")
                    if fed_eof:
                        raise httpx.RemoteProtocolError("server closed the connection mid-response")
                    # A close-delimited body ends here; h11 raises if the message was cut short.
                    h.receive_data(b"")
                    fed_eof = True
                    continue
                await self._wait(timeout)
                continue
            kind = type(event)
            if kind is h11.Response:
                head = event  # type: ignore[assignment]
            elif kind is h11.Data:
                chunks.append(event.data)  # type: ignore[union-attr]
            elif kind is h11.EndOfMessage:
                break
            elif kind is h11.ConnectionClosed:
                raise httpx.RemoteProtocolError("server closed the connection mid-response")
            # h11.InformationalResponse (100 Continue, 103): wait for the final one
        assert head is not None  # h11 yields EndOfMessage only after a Response
        return head, b"".join(chunks)

    async def _wait(self, timeout: float | None) -> None:
        # A bare future and one timer: asyncio.timeout()/wait_for cost more per read (this is the hot path).
        fut = self._waiter = self.loop.create_future()
        handle = self.loop.call_later(timeout, _expire, fut, "read") if timeout is not None else None
        try:
            await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def reusable(self) -> bool:
        h = self.h11
        # Connection: close, HTTP/1.0 and close-delimited bodies leave a state other than DONE.
        # Bytes after the body (a misbehaving proxy) would be read as the next request's reply.
        return not self.broken and h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0]


class AsyncioTransport(httpx.AsyncBaseTransport):
    """A keep-alive HTTP/1.1 connection pool on asyncio for ``http://`` URLs.

    At most ``limits.max_connections`` connections exist at once (requests beyond
    that wait for one, up to the pool timeout); at most
    ``limits.max_keepalive_connections`` stay idle, each for up to
    ``limits.keepalive_expiry`` seconds. A connection that fails, times out or is
    cancelled mid-request is closed, never pooled. ``opened`` counts connections
    ever opened (tests and debugging).
    """

    def __init__(self, *, limits: httpx.Limits = DEFAULT_LIMITS) -> None:
        self._max = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._slots = asyncio.Semaphore(self._max) if self._max else None
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._idle_count = 0
        self._open = 0
        self._closed = False
        self.opened = 0

    @property
    def open_connections(self) -> int:
        """Connections open now, in use or idle."""
        return self._open

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme != "http":
            raise httpx.UnsupportedProtocol(f"AsyncioTransport speaks plain http, not {url.scheme!r}")
        key = (url.host, url.port or 80)
        timeouts: dict[str, Any] = request.extensions.get("timeout") or {}
        body = await request.aread()
        await self._acquire(timeouts.get("pool"))
        try:
            conn = self._take_idle(key)
            if conn is not None:
                try:
                    return await self._exchange(conn, key, request, body, timeouts)
                except _Dead:
                    # The server closed it while it sat idle (restart, idle timeout) and we wrote before
                    # noticing: once more on a new connection, or every restart costs each lane an attempt.
                    pass
            conn = await self._connect(key, timeouts.get("connect"))
            try:
                return await self._exchange(conn, key, request, body, timeouts)
            except _Dead as exc:
                cause = exc.args[0] if exc.args else None
                if isinstance(cause, OSError):
                    raise httpx.ReadError(f"connection lost before a response: {cause}") from cause
                raise httpx.RemoteProtocolError("server disconnected without sending a response") from None
        finally:
            if self._slots is not None:
                self._slots.release()

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                self._discard(conn, abort=False)
        self._idle.clear()
        self._idle_count = 0

    # pool
    async def _acquire(self, timeout: float | None) -> None:
        slots = self._slots
        if slots is None:
            return
        if not slots.locked():
            await slots.acquire()  # the fast path: no timer
            return
        try:
            async with asyncio.timeout(timeout):
                await slots.acquire()
        except TimeoutError as exc:
            raise httpx.PoolTimeout(f"no free connection within {timeout}s") from exc

    def _take_idle(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        if not conns:
            return None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while conns:
            conn = conns.pop()  # most recently used first: the likeliest to be alive
            self._idle_count -= 1
            # A connection from an earlier asyncio.run() belongs to a closed loop: never reuse it.
            if conn.loop is loop and conn.usable(now, self._expiry):
                return conn
            self._discard(conn, abort=True)
        return None

    async def _connect(self, key: tuple[str, int], timeout: float | None) -> _Connection:
        if self._max is not None and self._open >= self._max:
            self._evict_one()  # we hold a slot, so at least one of the open connections is idle
        loop = asyncio.get_running_loop()
        conn = _Connection(loop)
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(lambda: conn, key[0], key[1])
        except TimeoutError as exc:  # before OSError: TimeoutError is one
            raise httpx.ConnectTimeout(f"connecting to {key[0]}:{key[1]} took over {timeout}s") from exc
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect to {key[0]}:{key[1]}: {exc}") from exc
        self._open += 1
        self.opened += 1
        return conn

    def _evict_one(self) -> None:
        for conns in self._idle.values():
            if conns:
                self._discard(conns.pop(0), abort=False)  # the oldest
                self._idle_count -= 1
                return

    def _release(self, conn: _Connection, key: tuple[str, int]) -> None:
        if self._closed or not conn.reusable() or (self._max_idle is not None and self._idle_count >= self._max_idle):
            self._discard(conn, abort=False)
            return
        conn.h11.start_next_cycle()
        conn.busy = False
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(key, []).append(conn)
        self._idle_count += 1

    def _discard(self, conn: _Connection, *, abort: bool) -> None:
        if conn.closed:
            return
        conn.closed = conn.broken = True
        self._open -= 1
        if conn.transport is None:
            return
        try:
            # abort(): a failed or cancelled exchange leaves bytes in flight that must not be flushed.
            conn.transport.abort() if abort else conn.transport.close()
        except RuntimeError:  # its event loop is closed; the socket is closed with the transport object
            pass

    async def _exchange(
        self, conn: _Connection, key: tuple[str, int], request: httpx.Request, body: bytes, timeouts: dict[str, Any]
    ) -> httpx.Response:
        try:
            await conn.send(request, body, timeouts.get("write"))
            head, content = await conn.receive(timeouts.get("read"))
        except BaseException as exc:  # CancelledError included: a half-done exchange is never pooled
            self._discard(conn, abort=True)
            mapped = _as_httpx(exc) if isinstance(exc, Exception) else exc
            if mapped is exc:
                raise
            raise mapped from exc
        self._release(conn, key)
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=httpx.ByteStream(content),
            extensions={"http_version": b"HTTP/" + head.http_version, "reason_phrase": head.reason},
            request=request,
        )


def _as_httpx(exc: Exception) -> Exception:
    """The httpx exception for a failure inside one exchange; ``exc`` itself when it needs none."""
    if isinstance(exc, _Expired):
        if exc.args[0] == "write":
            return httpx.WriteTimeout("no progress writing the request in time")
        return httpx.ReadTimeout("no reply from the server in time")
    if isinstance(exc, h11.RemoteProtocolError):
        return httpx.RemoteProtocolError(str(exc))
    if isinstance(exc, h11.LocalProtocolError):
        return httpx.LocalProtocolError(str(exc))
    if isinstance(exc, OSError):
        return httpx.ReadError(str(exc))
    return exc
