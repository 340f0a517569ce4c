"""Several hosts: spread and stick, fail over, probe back in, and a job that survives losing a host."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from batchd.backends.base import ChatRequest
from batchd.backends.multi import FAIL_THRESHOLD, MultiBackend
from batchd.backends.ollama import OllamaBackend
from batchd.config import BackendSettings, Settings
from batchd.errors import BackendServerError, BackendUnavailable
from batchd.run.connect import make_backend
from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import run_batchd
from tests.support.waiting import wait_for


@pytest.fixture
def pair() -> Iterator[tuple[Emulator, Emulator]]:
    a, b = Emulator().start(), Emulator().start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _multi(*emus: Emulator, clock: Clock | None = None) -> MultiBackend:
    return MultiBackend([OllamaBackend(url=e.url) for e in emus], clock=clock or Clock())


def _req(i: int = 0, affinity: int | None = None) -> ChatRequest:
    return ChatRequest(
        model="gemma3:4b", num_ctx=2048, messages=[{"role": "user", "content": f"q{i}"}], affinity=affinity
    )


def test_make_backend_builds_multi_for_several_urls(pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair
    settings = Settings(backend=BackendSettings(urls=[a.url, b.url]))
    backend = make_backend(settings)
    assert isinstance(backend, MultiBackend) and backend.host == f"{a.url},{b.url}"
    assert not isinstance(make_backend(Settings(backend=BackendSettings(urls=[a.url]))), MultiBackend)
    asyncio.run(backend.aclose())


def test_lanes_stick_to_their_host(pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair

    async def main() -> None:
        multi = _multi(a, b)
        try:
            for i in range(6):
                await multi.chat(_req(i, affinity=0))
                await multi.chat(_req(i, affinity=3))
        finally:
            await multi.aclose()

    asyncio.run(main())
    assert a.chat_count == 6 and b.chat_count == 6
    assert {c["messages"][0]["content"] for c in a.calls} == {f"q{i}" for i in range(6)}


def test_requests_without_affinity_are_spread(pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair
    a.latency = b.latency = 0.02

    async def main() -> None:
        multi = _multi(a, b)
        try:
            await asyncio.gather(*(multi.chat(_req(i)) for i in range(20)))
        finally:
            await multi.aclose()

    asyncio.run(main())
    assert a.chat_count == 10 and b.chat_count == 10


def test_a_dead_host_is_taken_out_and_probed_back(pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair
    clock = Clock()

    async def main() -> None:
        multi = _multi(a, b, clock=clock)
        try:
            a.down()
            for i in range(4):  # lane 0 lives on a; while a is out it lands on b, no error
                assert (await multi.chat(_req(i, affinity=0))).content
            assert multi.healthy() == [multi.hosts[1].backend]
            a.up()
            assert (await multi.chat(_req(9, affinity=0))).content  # backoff not over: still on b
            assert a.chat_count == 0
            clock.now += 1.0  # backoff over: the next call starts a probe
            await multi.chat(_req(10, affinity=1))
            await asyncio.wait_for(multi.hosts[0].probe, 5)  # type: ignore[arg-type]
            assert len(multi.healthy()) == 2
            await multi.chat(_req(11, affinity=0))
            assert a.chat_count == 1  # back home
        finally:
            await multi.aclose()

    asyncio.run(main())
    assert b.chat_count == 6


def test_repeated_server_errors_take_a_host_out(pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair
    a.fail_next(502, count=FAIL_THRESHOLD)

    async def main() -> None:
        multi = _multi(a, b)
        try:
            for _ in range(FAIL_THRESHOLD):
                with pytest.raises(BackendServerError):  # the runner retries these with backoff
                    await multi.chat(_req(affinity=0))
            assert multi.hosts[0].down and not multi.hosts[1].down
            await multi.chat(_req(affinity=0))
        finally:
            await multi.aclose()

    asyncio.run(main())
    assert b.chat_count == 1


def test_all_hosts_down_pauses_until_one_is_back(pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair

    async def main() -> None:
        multi = _multi(a, b)
        try:
            a.down()
            b.down()
            with pytest.raises(BackendUnavailable, match="all 2 hosts"):
                await multi.chat(_req())
            with pytest.raises(BackendUnavailable):
                await multi.ping()
            b.up()
            await multi.ping()  # what the runner's outage gate calls: any host back will do
            assert multi.healthy() == [multi.hosts[1].backend]
            assert (await multi.chat(_req(affinity=0))).content
        finally:
            await multi.aclose()

    asyncio.run(main())


def test_context_length_is_the_smallest_window() -> None:
    with Emulator(context_length=8192) as a, Emulator(context_length=4096) as b:

        async def main() -> int | None:
            multi = _multi(a, b)
            try:
                return await multi.context_length("gemma3:4b")
            finally:
                await multi.aclose()

        assert asyncio.run(main()) == 4096


def test_job_finishes_on_the_other_host_when_one_stops(folders: Folders, pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair
    a.latency = b.latency = 0.005
    ids = write_jsonl(folders.inbox / "batch.jsonl", 400)

    def stop_a_mid_job() -> None:
        wait_for(lambda: a.chat_count >= 40, timeout=60)
        a.down()

    stopper = threading.Thread(target=stop_a_mid_job)
    stopper.start()
    env = folders.env(a.url, BATCHD_BACKEND__URLS=f'["{a.url}", "{b.url}"]', BATCHD_BACKEND__LANES="4")
    proc = run_batchd(env, "run", "--once")
    stopper.join()
    assert proc.returncode == 0, proc.stderr
    out = folders.outbox / "batch"
    results, errors = read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl")
    assert errors == []
    assert [r["custom_id"] for r in results] == ids  # every custom_id exactly once, in input order
    assert a.chat_count >= 40 and b.chat_count > 200
    assert '"host_down"' in proc.stdout + proc.stderr


def test_a_lanes_conversation_stays_on_its_host(folders: Folders, pair: tuple[Emulator, Emulator]) -> None:
    a, b = pair
    a.latency = b.latency = 0.005
    write_jsonl(folders.inbox / "c.jsonl", 60)
    env = folders.env(
        a.url,
        BATCHD_BACKEND__URLS=f'["{a.url}", "{b.url}"]',
        BATCHD_BACKEND__LANES="3",
        BATCHD_CONTEXT__MODE="conversation",
    )
    assert run_batchd(env, "run", "--once").returncode == 0
    hosts_of: dict[str, set[str]] = {}
    for name, emu in (("a", a), ("b", b)):
        for call in emu.calls:
            users = [m["content"] for m in call["messages"] if m["role"] == "user"]
            hosts_of.setdefault(users[0], set()).add(name)  # a lane's history starts with its first question
    assert len(hosts_of) == 3  # three lanes, three conversations
    assert all(len(h) == 1 for h in hosts_of.values()), hosts_of
