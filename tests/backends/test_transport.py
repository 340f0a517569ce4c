"""AsyncioTransport against real loopback servers: pooling, restarts, faults, timeouts, no fd leaks."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest

from batchd.backends.transport import AsyncioTransport, make_client
from tests.support.emulator import Emulator
from tests.support.waiting import until

MODEL = "gemma3:4b"


def client_for(
    url: str, *, read: float = 10.0, max_connections: int = 16
) -> tuple[httpx.AsyncClient, AsyncioTransport]:
    transport = AsyncioTransport(
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    )
    client = httpx.AsyncClient(base_url=url, transport=transport, timeout=httpx.Timeout(read, connect=2.0))
    return client, transport


async def chat(client: httpx.AsyncClient, text: str = "hi") -> httpx.Response:
    return await client.post(
        "/api/chat", json={"model": MODEL, "stream": False, "messages": [{"role": "user", "content": text}]}
    )


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


def test_sequential_requests_share_one_connection(emulator: Emulator) -> None:
    async def main() -> None:
        client, transport = client_for(emulator.url)
        async with client:
            for i in range(20):
                resp = await chat(client, f"q{i}")
                assert resp.status_code == 200 and resp.json()["message"]["content"]
            assert transport.opened == 1 and transport.open_connections == 1
            resp = await client.get("/api/tags")
            assert resp.request.url.path == "/api/tags" and resp.headers["content-type"].startswith("application/json")
            assert resp.http_version == "HTTP/1.1" and resp.reason_phrase == "OK"
            assert transport.opened == 1
        assert transport.open_connections == 0  # aclose closed the idle one

    run(main)


def test_restart_is_retried_on_a_new_connection(emulator: Emulator) -> None:
    async def main() -> None:
        client, transport = client_for(emulator.url)
        async with client:
            await asyncio.gather(*(chat(client, f"a{i}") for i in range(4)))
            pooled = transport.opened
            # down() cuts the idle connections; nothing runs the loop in between, so the first write
            # goes to a dead connection and must be retried, not raised.
            emulator.down()
            emulator.up()
            replies = await asyncio.gather(*(chat(client, f"b{i}") for i in range(4)))
            assert all(r.status_code == 200 for r in replies)
            assert transport.opened > pooled
            # Once the loop has seen the close, the dead idle ones are skipped without a retry.
            emulator.down()
            emulator.up()
            await asyncio.sleep(0.05)
            assert (await chat(client, "c")).status_code == 200

    run(main)


def test_refused_is_connect_error_also_after_a_pooled_connection(emulator: Emulator) -> None:
    async def main() -> None:
        client, _ = client_for(emulator.url)
        async with client:
            assert (await chat(client)).status_code == 200
            emulator.down()
            with pytest.raises(httpx.ConnectError):  # the backends pause the job on this one
                await chat(client)
            with pytest.raises(httpx.ConnectError):
                await chat(client)
            emulator.up()
            assert (await chat(client)).status_code == 200

    run(main)


def test_read_timeout_closes_the_connection(emulator: Emulator) -> None:
    async def main() -> None:
        client, transport = client_for(emulator.url, read=0.2)
        async with client:
            assert (await chat(client)).status_code == 200
            emulator.timeout_next(seconds=3)
            with pytest.raises(httpx.ReadTimeout):
                await chat(client)
            assert transport.open_connections == 0
            assert (await chat(client)).status_code == 200
            assert transport.opened == 2

    run(main)


def test_drop_on_a_fresh_connection_is_a_transport_error(emulator: Emulator) -> None:
    async def main() -> None:
        client, transport = client_for(emulator.url)
        async with client:
            emulator.drop_next()
            with pytest.raises(httpx.TransportError) as info:
                await chat(client)
            assert isinstance(info.value, (httpx.RemoteProtocolError, httpx.ReadError))
            assert emulator.chat_count == 1  # a fresh connection is never retried
            assert transport.open_connections == 0
            assert (await chat(client)).status_code == 200

    run(main)


def test_drop_on_a_pooled_connection_is_retried_once(emulator: Emulator) -> None:
    # Indistinguishable from a close while idle, so it is retried: the server sees the request twice.
    async def main() -> None:
        client, _ = client_for(emulator.url)
        async with client:
            await chat(client)
            emulator.drop_next()
            assert (await chat(client)).status_code == 200
            assert emulator.chat_count == 3
            emulator.drop_next(count=2)  # the retry dropped too: an error, not a loop
            with pytest.raises(httpx.TransportError):
                await chat(client)

    run(main)


def test_k_concurrent_requests_get_k_connections(emulator: Emulator) -> None:
    emulator.latency = 0.2

    async def main() -> None:
        client, transport = client_for(emulator.url)
        async with client:
            await asyncio.gather(*(chat(client, f"q{i}") for i in range(4)))
            assert transport.opened == 4 and emulator.peak_concurrency == 4
            await asyncio.gather(*(chat(client, f"r{i}") for i in range(4)))
            assert transport.opened == 4  # all four were pooled and reused

    run(main)


def test_max_connections_bounds_connections_and_concurrency(emulator: Emulator) -> None:
    emulator.latency = 0.1

    async def main() -> None:
        client, transport = client_for(emulator.url, max_connections=2)
        async with client:
            replies = await asyncio.gather(*(chat(client, f"q{i}") for i in range(6)))
            assert all(r.status_code == 200 for r in replies)
            assert transport.opened == 2 and emulator.peak_concurrency == 2

    run(main)


def test_cancelled_and_failed_requests_leak_no_descriptors(emulator: Emulator) -> None:
    emulator.latency = 0.3

    async def main() -> None:
        client, transport = client_for(emulator.url)
        async with client:
            await chat(client, "warm-up")  # imports and lazy set-up done before counting
        before = fds()
        client, transport = client_for(emulator.url)
        async with client:
            for round_ in range(10):
                sent = emulator.chat_count
                tasks = [asyncio.create_task(chat(client, f"c{round_}-{i}")) for i in range(4)]
                await until(lambda: emulator.chat_count >= sent + 4)  # all four are mid-request
                for t in tasks:
                    t.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results)
                assert transport.open_connections == 0
            fast, fast_transport = client_for(emulator.url, read=0.05)  # shorter than the latency
            async with fast:
                for _ in range(5):
                    with pytest.raises(httpx.ReadTimeout):
                        await chat(fast)
                assert fast_transport.open_connections == 0
        # Server-side sockets close as the emulator's handlers finish; a client leak never would.
        await until(lambda: fds() <= before)

    run(main)


@pytest.mark.parametrize(
    ("reply", "reused"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\no\r\n1\r\nk\r\n0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
        (b"HTTP/1.0 200 OK\r\n\r\nok", False),  # the body ends where the connection does
    ],
)
def test_framing_and_reuse(reply: bytes, reused: bool) -> None:
    async def main() -> None:
        accepted = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(reply)
                    await writer.drain()
                    if b"Connection: close" in reply or reply.startswith(b"HTTP/1.0"):
                        break
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client, transport = client_for(f"http://127.0.0.1:{port}")
        async with server, client:
            for _ in range(3):
                resp = await client.get("/")
                assert resp.status_code == 200 and resp.content == b"ok"
            assert transport.opened == accepted == (1 if reused else 3)

    run(main)


def test_trailing_bytes_after_a_body_never_reach_the_next_request() -> None:
    """A misbehaving proxy sends bytes after a complete response (h11's ``trailing_data``): the
    connection must be dropped, not pooled, or the next request would read them as its reply."""

    async def main() -> None:
        accepted = 0

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal accepted
            accepted += 1
            n = 0
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    n += 1
                    body = f"r{accepted}.{n}".encode()
                    # One segment: the real reply, then a stray second response nobody asked for.
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                        + b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client, transport = client_for(f"http://127.0.0.1:{port}")
        async with server, client:
            bodies = [(await client.get("/")).content for _ in range(3)]
            assert b"stray" not in bodies
            assert bodies == [b"r1.1", b"r2.1", b"r3.1"]  # each on a fresh connection
            assert transport.opened == 3

    run(main)


def test_make_client_uses_the_asyncio_transport_for_plain_http_only() -> None:
    def transport_of(url: str) -> object:
        client = make_client(url, timeout=httpx.Timeout(5.0), limits=httpx.Limits(max_connections=2))
        return client._transport  # noqa: SLF001 - which transport httpx got is the point of the test

    assert isinstance(transport_of("http://127.0.0.1:11434"), AsyncioTransport)
    assert not isinstance(transport_of("https://api.example.com"), AsyncioTransport)
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    assert make_client("http://x", timeout=httpx.Timeout(5.0), limits=httpx.Limits(), transport=mock)._transport is mock  # noqa: SLF001


def test_a_pool_outlives_its_event_loop(emulator: Emulator) -> None:
    client, transport = client_for(emulator.url)

    async def once() -> None:
        assert (await chat(client)).status_code == 200

    run(once)  # leaves an idle connection bound to a loop that is now closed
    run(once)
    assert transport.opened == 2
    run(client.aclose)
