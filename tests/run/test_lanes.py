"""The adaptive lanes controller on a fake clock: simulated minutes in milliseconds."""

from __future__ import annotations

import asyncio

import pytest

from batchd.run.lanes import LaneController, LaneTuning, Outcome, Reason
from tests.support.lanesim import Sim


def controller(sim: Sim, *, initial: int | None = None, **tuning: int) -> LaneController:
    return LaneController(LaneTuning(**tuning), initial=initial, clock=sim.clock)


def fixed_rate(k: int) -> float:
    """What K slots at a mean service of 0.125 s serve per second."""
    return k / 0.125


def test_grows_on_an_idle_server_to_lanes_max_within_seconds() -> None:
    sim = Sim(slots=10_000)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=10.0)
    assert ctl.limit == 64
    first_64 = next(c.at for c in ctl.changes if c.new == 64)
    assert first_64 < 6.0  # the scan: a window per level, and the ramp of each step not read
    assert all(c.new > c.old for c in ctl.changes)  # never a step back


@pytest.mark.parametrize("k", [4, 16, 64])
def test_holds_at_the_knee(k: int) -> None:
    sim = Sim(slots=k)
    ctl = controller(sim, lanes_max=128)
    sim.run(ctl, until=120.0)
    late = [c for c in ctl.changes if c.at > 20.0]
    # after warming up the limit stays near K: enough to fill the slots, not a long queue
    levels = [c.new for c in late] or [ctl.limit]
    assert min(levels) >= int(0.75 * k)
    assert max(levels) <= 1.5 * k + 1
    assert sim.rate(20.0, 120.0) >= 0.9 * fixed_rate(k)
    assert sim.p95(20.0) <= 1.5 * 0.2 + 0.05


def test_reaches_the_best_rate_within_seconds_at_every_k() -> None:
    for k in (1, 4, 16, 64):
        sim = Sim(slots=k)
        ctl = controller(sim, lanes_max=64)
        sim.run(ctl, until=60.0)
        assert sim.rate(10.0, 60.0) >= 0.9 * fixed_rate(k), k


def test_one_slot_sees_more_than_two_only_while_the_scan_looks_past_a_flat_step() -> None:
    sim = Sim(slots=1)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=600.0)
    # 1 -> 2 bought nothing, as on a CPU server whose 16 would pay: the scan must look up to 16 to know
    assert max(n for _, n in sim.in_flight_series) <= 16
    assert sim.time_above(ctl, 2, 0.0, 600.0) <= 0.02 * 600.0
    assert sim.time_above(ctl, 1, 60.0, 600.0) <= 0.1 * 540.0
    assert sim.p95() <= 1.5 * 0.2


def test_backs_off_on_queueing_when_latency_rises_without_throughput() -> None:
    sim = Sim(slots=8)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=10.0)
    # the scan doubles 1, 2, 4, 8; 16 and 32 find a queue (latency up, no more throughput): back to 8
    first = next(c for c in ctl.changes if c.new < c.old)
    assert [c.new for c in ctl.changes[: ctl.changes.index(first)]] == [2, 4, 8, 16, 32]
    assert first.reason is Reason.KNEE and first.old == 32 and first.new == 8
    assert first.latency is not None and first.floor is not None and first.latency > 1.5 * first.floor
    # from there, a step up that buys only a queue is undone
    sim.run(ctl, until=120.0)
    assert any(c.reason is Reason.QUEUEING and c.new < c.old for c in ctl.changes)
    assert ctl.limit <= 12


def test_follows_a_drop_in_capacity_within_seconds() -> None:
    sim = Sim(slots=16)
    ctl = controller(sim, lanes_max=64)
    sim.set_slots(4, at=30.0)
    sim.run(ctl, until=90.0)
    before = [c for c in ctl.changes if c.at <= 30.0]
    assert before and before[-1].new >= 12
    drop = next(c for c in ctl.changes if c.at > 30.0 and c.reason is Reason.QUEUEING)
    assert drop.at < 35.0
    assert all(c.new <= 7 for c in ctl.changes if c.at > 40.0)
    assert sim.rate(40.0, 90.0) >= 0.9 * fixed_rate(4)


def test_follows_a_rise_in_capacity_at_its_next_exploration() -> None:
    sim = Sim(slots=4)
    ctl = controller(sim, lanes_max=64)
    sim.set_slots(32, at=30.0)
    sim.run(ctl, until=120.0)
    # a held level is re-explored after at most cooldown_max windows (here 64 x ~0.5 s)
    assert sim.rate(90.0, 120.0) >= 0.9 * fixed_rate(32)


def test_backs_off_on_503_and_does_not_climb_back_into_it_at_once() -> None:
    sim = Sim(slots=8, queue_limit=2)
    ctl = controller(sim, lanes_max=64, initial=40)
    sim.run(ctl, until=60.0)
    busy = [c for c in ctl.changes if c.reason is Reason.BUSY]
    assert busy and busy[0].at < 0.01 and busy[0].new == 28
    late = sim.busy_answers
    sim.run(ctl, until=120.0)
    assert sim.busy_answers - late <= 0.01 * len(sim.completed)
    assert ctl.limit <= 10


def test_503_backs_off_once_per_window_not_once_per_reply() -> None:
    now = [0.0]
    ctl = LaneController(LaneTuning(lanes_max=64), initial=32, clock=lambda: now[0])
    tickets = [ctl.start() for _ in range(32)]
    now[0] = 0.1
    for t in tickets[:10]:
        ctl.done(t, Outcome.BUSY)
    assert ctl.limit == 22  # int(32 * 0.7): the other nine were sent under the old limit
    assert [c.reason for c in ctl.changes] == [Reason.BUSY]


def test_timeout_halves_and_other_errors_decide_nothing() -> None:
    now = [0.0]
    ctl = LaneController(LaneTuning(lanes_max=64), initial=32, clock=lambda: now[0])
    a, b = ctl.start(), ctl.start()
    now[0] = 600.0
    assert ctl.done(a, Outcome.ERROR) is None
    change = ctl.done(b, Outcome.TIMEOUT)
    assert change is not None and change.new == 16 and change.reason is Reason.TIMEOUT


def test_vram_pressure_shrinks_once_and_blocks_growth_until_it_clears() -> None:
    sim = Sim(slots=10_000)
    ctl = controller(sim, lanes_max=64, initial=32)
    change = ctl.pressure(True)
    assert change is not None and change.new == 24 and change.reason is Reason.VRAM
    assert ctl.pressure(True) is None
    sim.run(ctl, until=20.0)
    assert ctl.limit == 24
    ctl.pressure(False)
    sim.run(ctl, until=40.0)
    assert ctl.limit == 64


def test_bounds_and_a_pinned_controller() -> None:
    sim = Sim(slots=10_000)
    ctl = controller(sim, lanes_min=3, lanes_max=5)
    assert ctl.limit == 3
    sim.run(ctl, until=10.0)
    assert ctl.limit == 5
    pinned = controller(Sim(slots=1), lanes_min=1, lanes_max=1)
    assert pinned.fixed
    with pytest.raises(ValueError):
        LaneTuning(lanes_min=4, lanes_max=2)


def test_batching_server_keeps_growing_while_throughput_rises() -> None:
    # latency rises with the batch, but so does throughput: a vLLM-like server wants many in flight
    sim = Sim(slots=10_000, batching=1 / 64, service=lambda rng: rng.uniform(0.09, 0.11))
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=60.0)
    assert ctl.limit >= 32


def test_floor_follows_latency_that_does_not_depend_on_load() -> None:
    # every request gets slower (a conversation's history grows): fewer lanes would not help
    sim = Sim(slots=16)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=30.0)
    sim.service = lambda rng: rng.uniform(0.1, 0.4)  # twice as slow, same 16 slots
    sim.run(ctl, until=120.0)
    assert 12 <= ctl.limit <= 25
    assert sim.rate(60.0, 120.0) >= 0.9 * 16 / 0.25


def test_windows_count_completions_not_time() -> None:
    """A 30 s generation and a 30 ms one take the same decisions, scaled in time."""
    fast, slow = (
        Sim(slots=8, service=lambda r: r.uniform(0.02, 0.04)),
        Sim(slots=8, service=lambda r: r.uniform(20, 40)),
    )
    a, b = controller(fast, lanes_max=64), controller(slow, lanes_max=64)
    fast.run(a, until=60.0 * 0.001 * 30)
    slow.run(b, until=60.0 * 30)
    assert [(c.old, c.new, c.reason) for c in a.changes] == [(c.old, c.new, c.reason) for c in b.changes]


def test_measure_samples_a_call_and_passes_its_error_on() -> None:
    from batchd.errors import BackendBusy

    now = [0.0]
    ctl = LaneController(LaneTuning(lanes_max=64), initial=32, clock=lambda: now[0])

    async def reply() -> str:
        assert ctl.in_flight == 1  # counted from before the call to its end
        return "ok"

    async def busy() -> str:
        raise BackendBusy("503")

    assert asyncio.run(ctl.measure(reply())) == "ok" and ctl.in_flight == 0
    with pytest.raises(BackendBusy):
        asyncio.run(ctl.measure(busy()))
    assert ctl.in_flight == 0 and [c.reason for c in ctl.changes] == [Reason.BUSY] and ctl.limit < 32
