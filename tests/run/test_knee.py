"""The knee scan: its rules on given readings, then the controller on servers whose curves are not concave."""

from __future__ import annotations

from typing import Any

from batchd.run.knee import Knee, Reading, Scan
from batchd.run.lanes import LaneController, LaneTuning, Reason
from tests.support.lanesim import Sim

MEAN = 0.125  #: the simulated server's mean service time (uniform 0.05-0.2 s)


def scan_of(
    rates: dict[int, float], lanes_max: int = 64, rows_left: int | None = None
) -> tuple[list[int], Reading | None]:
    """Feed a scan readings from a curve (rate per limit; latency by Little's law): levels seen, knee."""
    scan = Scan(start=1, lanes_max=lanes_max, began=0.0, rows_left=lambda: rows_left)
    limit: int | None = 1
    seen = []
    while limit is not None:
        seen.append(limit)
        rate = rates[limit]
        limit = scan.observe(Reading(limit, rate, limit / rate, 1.2 * limit / rate))
    return seen, scan.knee()


# -- the scan on its own -----------------------------------------------------------------------------


def test_a_flat_first_step_does_not_stop_the_scan() -> None:
    seen, knee = scan_of({1: 4.2, 2: 4.4, 4: 5.6, 8: 7.0, 16: 7.1, 32: 7.0})
    assert seen == [1, 2, 4, 8, 16, 32]  # 2 did not pay, 4 and 8 did; past a gain two flat levels end it
    assert knee is not None and knee.limit == 8  # 16 is within 5%: the lower one, less latency
    seen, _ = scan_of({1: 4.2, 2: 4.3, 4: 4.4, 8: 4.3, 16: 4.4, 32: 7.0})
    assert seen == [1, 2, 4, 8, 16]  # before any level paid, four flat ones in a row end it


def test_a_curve_flat_for_three_steps_then_rising_is_found_in_a_long_job() -> None:
    # llama.cpp's server, 16 slots, one CPU thread, rows it had not seen (bench_real_knee, req/s):
    # 1 to 8 in flight read the same, 16 read 1.34x; a queue would read the same up to 8
    curve = {1: 2.45, 2: 2.36, 4: 2.47, 8: 2.41, 16: 3.30, 32: 2.96, 64: 2.9}
    seen, knee = scan_of(curve)
    assert seen == [1, 2, 4, 8, 16, 32, 64] and knee is not None and knee.limit == 16
    seen, knee = scan_of(curve, rows_left=900)  # the look at 16 queues ~32 requests: 50 rows left per level
    assert seen == [1, 2, 4, 8, 16, 32] and knee is not None and knee.limit == 16
    seen, knee = scan_of(curve, rows_left=240)  # a 240-row job looks at 4, not past it
    assert seen == [1, 2, 4] and knee is not None and knee.limit == 1


def test_a_short_job_does_not_look_past_a_flat_step() -> None:
    curve = {1: 4.2, 2: 4.4, 4: 5.6, 8: 7.0, 16: 7.1, 32: 7.0}
    # the look at 4 would queue ~8 requests: more than 4% of 150 rows left, so 2 ends the scan
    seen, knee = scan_of(curve, rows_left=150)
    assert seen == [1, 2] and knee is not None and knee.limit == 1
    seen, knee = scan_of(curve, rows_left=200)  # 50 rows per level: the look is cheap enough
    assert seen == [1, 2, 4, 8, 16] and knee is not None and knee.limit == 8
    # a level that pays is followed up whatever the job's length: only the look past a flat one costs
    seen, _ = scan_of({1: 1, 2: 2, 4: 4, 8: 4.1}, rows_left=50)
    assert seen == [1, 2, 4, 8]


def test_past_a_gain_a_long_job_looks_past_one_flat_level() -> None:
    # llama.cpp, 16 slots, new rows, a 960-row job: 4 read 1.2x over 2 (a busy moment), 8 no more than 4;
    # a scan that stopped there held 4 for the whole job while 16 in flight does 1.34x
    curve = {1: 2.45, 2: 2.36, 4: 2.9, 8: 2.85, 16: 3.9, 32: 3.5, 64: 3.4}
    seen, knee = scan_of(curve, rows_left=900)
    assert seen == [1, 2, 4, 8, 16, 32] and knee is not None and knee.limit == 16
    seen, knee = scan_of(curve, rows_left=600)  # the look at 16 would queue more than 4% of what is left
    assert seen == [1, 2, 4, 8] and knee is not None and knee.limit == 4


def test_a_short_job_on_one_slot_keeps_its_p95_near_one_requests() -> None:
    # 160 rows on a 1-slot server (the bench's auto job at K = 1): the scan reads 2 once, sees no gain,
    # and does not look at 4 (the 2% rule); the job's p95 stays within 1.5x of lanes = 1's
    for seed in (1, 2, 3):
        sim = Sim(slots=1, seed=seed)
        ctl = controller(sim, lanes_max=64)
        ctl.rows_left = lambda: max(0, 160 - len(sim.completed))
        t = 0.0
        while len(sim.completed) < 160:
            t += 0.5
            sim.run(ctl, until=t)
        alone = Sim(slots=1, seed=seed)
        alone.run(controller(alone, lanes_min=1, lanes_max=1), until=20.0)
        assert max(n for _, n in sim.in_flight_series) <= 2, seed
        # (goal 1.5x; the bench's real subprocess read 1.54x while the hill-climb probed 2 again 10 s later:
        # the scan's flat look at 2 counts as an undone step, so that probe waits twice as long)
        assert sim.p95(0.0, sim.completed[159][0]) <= 1.25 * alone.p95(), seed


def test_a_plateau_ends_the_scan_and_its_lowest_level_is_the_knee() -> None:
    seen, knee = scan_of({1: 1, 2: 2, 4: 4, 8: 7.9, 16: 8.1, 32: 8})
    assert seen == [1, 2, 4, 8, 16, 32]
    assert knee is not None and knee.limit == 8
    seen, _ = scan_of({1: 1, 2: 2, 4: 4, 8: 7.9, 16: 8.1, 32: 8}, rows_left=1000)
    assert seen == [1, 2, 4, 8, 16]  # one look past a gain costs what a job of 1,000 rows cannot afford


def test_a_curve_that_falls_ends_the_scan_at_once() -> None:
    seen, knee = scan_of({1: 1, 2: 2, 4: 4, 8: 8, 16: 5})
    assert seen == [1, 2, 4, 8, 16]
    assert knee is not None and knee.limit == 8


def test_a_fall_before_any_gain_is_one_flat_step_not_the_end() -> None:
    # measured on llama.cpp over two busy CPU cores: a busy moment made 2 in flight read below 1
    seen, knee = scan_of({1: 4.0, 2: 3.0, 4: 5.5, 8: 7.0, 16: 7.1, 32: 7.0})
    assert seen == [1, 2, 4, 8, 16, 32] and knee is not None and knee.limit == 8
    seen, _ = scan_of({1: 4.0, 2: 3.0, 4: 3.1, 8: 3.0, 16: 3.1})
    assert seen == [1, 2, 4, 8, 16]  # four levels in a row without a gain still end it


def test_a_deep_queue_that_bought_nothing_ends_the_scan_past_a_gain() -> None:
    scan = Scan(start=1, lanes_max=64, began=0.0)
    assert scan.observe(Reading(1, 8.0, 0.12, 0.2)) == 2
    assert scan.observe(Reading(2, 8.1, 0.25, 0.9)) == 4  # before a gain: one slow request, one flat step
    scan = Scan(start=1, lanes_max=64, began=0.0)
    assert scan.observe(Reading(1, 4.0, 0.12, 0.2)) == 2
    assert scan.observe(Reading(2, 8.0, 0.12, 0.2)) == 4
    assert scan.observe(Reading(4, 8.1, 0.25, 0.9)) is None  # p95 4.5x the best's, nothing bought


def test_the_scan_ends_at_lanes_max_and_where_the_client_cannot_fill_a_level() -> None:
    seen, knee = scan_of({1: 1, 2: 2, 4: 4, 8: 8}, lanes_max=8)
    assert seen == [1, 2, 4, 8] and knee is not None and knee.limit == 8
    scan = Scan(start=1, lanes_max=64, began=0.0)
    scan.observe(Reading(1, 1, 1, 1))
    assert scan.observe(Reading(2, 2, 1, 1), used=False) is None


def test_periodic_rescans_stay_within_two_percent_of_the_time() -> None:
    knee = Knee(lanes_max=64, now=0.0)
    assert knee.begin(1, 0.0) == 1
    knee.finish(5.0)  # a 5 s scan at the start
    assert not knee.periodic_due(100.0, 8, 0.5)
    assert not knee.periodic_due(499.0, 8, 0.5)
    assert knee.periodic_due(500.0, 8, 0.5)  # (5 + 5) s <= 2% of 500 s
    assert not knee.periodic_due(500.0, 64, 0.5)  # nothing above lanes_max to look at
    knee.begin(8, 500.0, Reading(8, 10.0, 0.8, 1.0))
    assert not knee.periodic_due(600.0, 8, 0.5)  # one at a time
    knee.finish(502.0)
    # 7 s spent, the last took 2 s: (7 + 2) s <= 2% from 450 s on, and 2 s <= 2% of the 100 s since from 600 s
    assert knee.spent == 7.0 and not knee.periodic_due(599.0, 8, 0.5) and knee.periodic_due(600.0, 8, 0.5)
    # a scan is never reckoned cheaper than three windows, and one cut short by errors doubles the wait
    knee.begin(8, 600.0, Reading(8, 10.0, 0.8, 1.0))
    knee.finish(600.0, failed=True)
    assert not knee.periodic_due(600.0 + 49 * 6 - 1, 8, 1.0) and knee.periodic_due(600.0 + 49 * 6, 8, 1.0)


def test_a_rescan_after_a_capacity_change_waits_five_last_scans() -> None:
    knee = Knee(lanes_max=64, now=0.0)
    knee.begin(1, 0.0)
    knee.finish(4.0)
    assert not knee.after_change_allowed(23.0)
    assert knee.after_change_allowed(24.0)


def test_a_baseline_is_the_first_level_and_the_scan_goes_on_above_it() -> None:
    knee = Knee(lanes_max=64, now=0.0)
    assert knee.begin(8, 0.0, Reading(8, 10.0, 0.8, 1.0)) == 16


# -- the controller on simulated servers --------------------------------------------------------------


def controller(sim: Sim, *, initial: int | None = None, **tuning: Any) -> LaneController:
    return LaneController(LaneTuning(**tuning), initial=initial, clock=sim.clock)


def flat_first_step(n: int) -> float:
    """CPU batching: two in flight no faster than one, eight four times as fast."""
    return max(1.0, n / 2)


def test_flat_first_step_the_scan_finds_eight() -> None:
    sim = Sim(slots=8, curve=flat_first_step)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=120.0)
    best = 4 / MEAN  # lanes 8
    assert sim.rate(20.0, 120.0) >= 0.9 * best
    assert all(c.new >= 8 for c in ctl.changes if c.at > 20.0)
    assert 8 <= ctl.limit <= 12


def flat_to_eight(n: int) -> float:
    """llama.cpp, 16 slots, one CPU thread, new rows: 1 to 8 in flight as fast as one, 16 1.34x."""
    return 1.0 if n < 16 else 1.34


def test_flat_to_eight_the_first_scan_of_a_long_job_finds_sixteen() -> None:
    # as measured: 0.36-0.44 s a request alone (a steady server; the 0.05-0.2 s work of the other
    # simulations spreads so much that 16 requests cannot tell a 1.34x step from noise)
    sim = Sim(slots=16, curve=flat_to_eight, service=lambda rng: rng.uniform(0.36, 0.44))
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=600.0)
    scan = ctl.changes[: next(i for i, c in enumerate(ctl.changes) if c.reason is not Reason.SCAN)]
    assert [c.new for c in scan] == [2, 4, 8, 16, 32, 64], ctl.changes  # the first scan looked past 2, 4 and 8
    assert ctl.changes[len(scan)].reason is Reason.KNEE and ctl.changes[len(scan)].new == 16
    assert sim.rate(60.0, 600.0) >= 0.95 * 16 * 1.34 / 16 / 0.4
    assert all(c.new >= 16 for c in ctl.changes if c.at > 60.0)


def test_a_plateau_the_scan_stops_on_it_and_the_limit_stays_near_its_start() -> None:
    # a server with room for everyone whose throughput stops growing at 8 (CPU-bound): more only wait longer
    sim = Sim(slots=10_000, curve=lambda n: float(min(n, 8)))
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=120.0)
    first_knee = next(i for i, c in enumerate(ctl.changes) if c.reason is Reason.KNEE)
    assert max(c.new for c in ctl.changes[:first_knee]) == 32  # the first scan stops two levels past 8
    assert sim.rate(20.0, 120.0) >= 0.9 * 8 / MEAN
    assert 8 <= ctl.limit <= 12
    assert sim.p95(20.0) <= 1.5 * 0.2 + 0.05


def test_a_curve_that_falls_after_the_knee() -> None:
    def curve(n: int) -> float:  # thrashing past 8 (a KV cache that swaps)
        return float(n) if n <= 8 else max(1.0, 8 - 0.4 * (n - 8))

    sim = Sim(slots=10_000, curve=curve)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=120.0)
    assert max(c.new for c in ctl.changes) == 16  # the scan saw the fall at 16 and went no further
    knee = next(c for c in ctl.changes if c.reason is Reason.KNEE)
    assert (knee.old, knee.new) == (16, 8)
    assert sim.rate(20.0, 120.0) >= 0.9 * 8 / MEAN
    assert all(c.new <= 12 for c in ctl.changes if c.at > 20.0)


def test_503s_during_the_scan_end_it_at_the_best_level_below() -> None:
    sim = Sim(slots=8, queue_limit=4)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=20.0)
    busy = next(c for c in ctl.changes if c.reason is Reason.BUSY)
    assert (busy.old, busy.new) == (16, 8)  # 8 was the best the scan measured; int(16 x 0.7) would be 11
    late = sim.busy_answers
    sim.run(ctl, until=120.0)
    assert sim.busy_answers - late <= 0.01 * len(sim.completed)
    assert sim.rate(20.0, 120.0) >= 0.9 * 8 / MEAN


def test_a_periodic_rescan_finds_a_gain_behind_a_flat_step() -> None:
    # two slots at first; at 100 s the server gets sixteen, but 3 and 4 in flight are no faster than 2
    sim = Sim(slots=2)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=100.0)
    assert ctl.limit <= 3
    sim.slots = 16
    sim.curve = lambda n: 2.0 if n <= 4 else n / 2
    sim.run(ctl, until=1500.0)
    assert sim.rate(1200.0, 1500.0) >= 0.9 * 8 / MEAN
    assert ctl.knee.scans >= 2
    assert ctl.knee.spent <= 0.025 * 1500.0  # the scans' cost stays bounded


def test_scans_cost_at_most_two_percent_of_a_long_job_at_the_knee() -> None:
    sim = Sim(slots=16)
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=3600.0)
    assert ctl.knee.scans >= 2  # it did look again
    assert ctl.knee.spent <= 0.02 * 3600.0 + 10.0  # the first scan, then within the budget
    assert sim.rate(60.0, 3600.0) >= 0.9 * 16 / MEAN
    assert sim.p95(60.0) <= 1.5 * 0.2 + 0.05


def test_a_drop_in_capacity_is_followed_by_a_rescan() -> None:
    sim = Sim(slots=16, curve=None)
    ctl = controller(sim, lanes_max=64)
    sim.set_slots(4, at=60.0)
    sim.run(ctl, until=120.0)
    after = [c for c in ctl.changes if c.at > 60.0]
    assert any(c.reason is Reason.SCAN for c in after) and any(c.reason is Reason.KNEE for c in after)
    assert ctl.knee.scans == 2
    assert sim.rate(75.0, 120.0) >= 0.9 * 4 / MEAN
    assert 4 <= ctl.limit <= 7


def test_a_steady_level_is_read_once_and_a_noisy_one_again() -> None:
    scan = Scan(start=1, lanes_max=64, began=0.0, samples=16)
    steady = Reading(1, 8.0, 0.125, 0.13, cv=0.05, samples=4)  # error 0.05 / 2 = 2.5%
    assert scan.observe(steady) == 2
    noisy = Scan(start=1, lanes_max=64, began=0.0, samples=16)
    assert noisy.observe(Reading(1, 8.0, 0.125, 0.2, cv=0.35, samples=4)) == 1  # 17%: read 1 again
    assert noisy.observe(Reading(1, 8.4, 0.119, 0.2, cv=0.35, samples=4)) == 1
    assert noisy.observe(Reading(1, 7.8, 0.128, 0.2, cv=0.35, samples=4)) == 1
    assert noisy.observe(Reading(1, 8.2, 0.122, 0.2, cv=0.35, samples=4)) == 2  # 16 requests: enough
    (one,) = noisy.points
    assert one.samples == 16 and abs(one.rate - 8.1) < 1e-9


def test_the_controllers_first_scan_on_a_steady_server_reads_a_few_requests_per_level() -> None:
    sim = Sim(slots=8, service=lambda rng: rng.uniform(0.12, 0.13))
    ctl = controller(sim, lanes_max=64)
    sim.run(ctl, until=2.0)
    first = ctl.changes[0]
    assert (first.old, first.new, first.reason) == (1, 2, Reason.SCAN)
    assert first.at < 5 * 0.13  # four requests at one in flight, not sixteen
