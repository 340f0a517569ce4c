"""The emulator's K parallel slots: queueing beyond K, K changed now or at a given time."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from tests.support.emulator import Emulator
from tests.support.emulator.slots import SlotPool


def _chat(url: str) -> float:
    body = json.dumps({"model": "gemma3:4b", "stream": False, "messages": [{"role": "user", "content": "hi"}]}).encode()
    started = time.perf_counter()
    req = urllib.request.Request(url + "/api/chat", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()
    return time.perf_counter() - started


def _burst(url: str, n: int) -> list[float]:
    with ThreadPoolExecutor(n) as pool:
        return sorted(pool.map(lambda _: _chat(url), range(n)))


def test_requests_beyond_k_wait_for_a_slot() -> None:
    with Emulator(latency=0.2, slots=2) as emu:
        took = _burst(emu.url, 4)
        assert emu.peak_concurrency == 2
    # two served at once, two queued behind them: about one latency, then about two
    assert max(took[:2]) < 0.35
    assert min(took[2:]) > 0.35


def test_set_slots_changes_k_at_once_and_at_a_given_time() -> None:
    with Emulator(latency=0.15, slots=1) as emu:
        emu.set_slots(4)
        assert emu.slots == 4
        assert max(_burst(emu.url, 4)) < 0.3
        emu.set_slots(1, at=0.0)  # already due: applied on the next request
        took = _burst(emu.url, 3)
        assert emu.slots == 1
        assert max(took) > 0.4  # the third waited for two others on one slot


def test_latency_range_draws_between_its_bounds() -> None:
    emu = Emulator(latency=0.05, latency_max=0.2)
    draws = [emu.request_latency() for _ in range(200)]
    assert min(draws) >= 0.05 and max(draws) <= 0.2
    assert max(draws) - min(draws) > 0.1
    assert Emulator(latency=0.1).request_latency() == 0.1


def test_pool_shrinks_without_cutting_running_requests_and_serves_in_order() -> None:
    pool = SlotPool(2)
    assert pool.acquire() and pool.acquire()
    pool.resize(1)
    order: list[int] = []

    def waiter(i: int) -> None:
        pool.acquire()
        order.append(i)

    threads = [threading.Thread(target=waiter, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)  # arrival order 0, 1
    pool.release()
    time.sleep(0.05)
    assert order == []  # 1 still runs and K is 1 now
    pool.release()
    time.sleep(0.1)
    assert order == [0]
    pool.release()
    for t in threads:
        t.join(2)
    assert order == [0, 1]


def test_scheduled_change_and_cancel() -> None:
    pool = SlotPool(1)
    pool.schedule(0.1, 3)
    assert pool.slots == 1
    time.sleep(0.15)
    assert pool.slots == 3
    stop = threading.Event()
    pool.resize(0 or None)
    assert pool.acquire(stop)
    one = SlotPool(1)
    assert one.acquire()
    stop.set()
    assert one.acquire(stop) is False  # an emulator going down lets waiting handlers go
