"""Who goes first (``batchd.schedule``): priority, aging, smallest remaining work, when a running job
yields; all on a fake wall clock."""

from __future__ import annotations

from batchd.schedule import Entry, Policy, Rules, Why

HOUR = 3600.0


def entry(job_id: str, seq: int, remaining: int, *, priority: int = 0, since: float = 0.0, **kw: object) -> Entry:
    return Entry(id=job_id, seq=seq, priority=priority, remaining=remaining, waiting_since=since, **kw)  # type: ignore[arg-type]


def test_priority_then_smallest_remaining_then_claim_order() -> None:
    rules = Rules()
    jobs = [
        entry("big", 1, 170_000),
        entry("small", 2, 10),
        entry("mid", 3, 500),
        entry("urgent", 4, 9_000, priority=5),
    ]
    assert [e.id for e in rules.queue(jobs, now=60)] == ["urgent", "small", "mid", "big"]
    places = rules.order(jobs, now=60)
    assert [(p.entry.id, p.why) for p in places] == [
        ("urgent", Why.NEXT),
        ("small", Why.PRIORITY),
        ("mid", Why.SMALLER),
        ("big", Why.SMALLER),
    ]
    assert Rules(policy=Policy.FIFO).next(jobs, now=60).id == "big"  # type: ignore[union-attr]


def test_aging_lifts_a_starved_big_job_on_a_fake_clock() -> None:
    rules = Rules(max_wait=HOUR)
    big = entry("big", 1, 170_000, since=0.0)
    # a stream of small jobs, each claimed just now: before the hour the big one keeps waiting...
    for minute in range(0, 60, 5):
        now = minute * 60.0
        small = entry(f"s{minute}", 10 + minute, 10, since=now)
        assert rules.next([big, small], now).id == small.id  # type: ignore[union-attr]
        assert not rules.aged(big, now)
    # ...after it, the big one goes first, and the running small job yields to it
    now = HOUR + 1
    small = entry("late", 99, 10, since=now)
    assert rules.aged(big, now)
    assert rules.next([big, small], now).id == "big"  # type: ignore[union-attr]
    running_small = entry("run", 98, 5, running=True)
    assert rules.challenge(running_small, [running_small, big], now) == (big, Why.AGED)
    # once lifted, the big job is not sent back by the next small one (only a higher priority does that)
    running_big = entry("big", 1, 169_000, running=True, lifted=True)
    assert rules.challenge(running_big, [running_big, small], now) is None
    urgent = entry("urgent", 100, 50, priority=1, since=now)
    assert rules.challenge(running_big, [running_big, urgent], now) == (urgent, Why.PRIORITY)
    # the status says why the small one waits: the running job was lifted by aging
    assert [p.why for p in rules.order([running_big, small], now)] == [Why.RUNNING, Why.AGED]


def test_a_running_job_never_yields_to_an_equal_rank_nor_across_models_on_size() -> None:
    rules = Rules()
    running = entry("a", 1, 100, running=True, model="m1", num_ctx=8192)
    assert rules.challenge(running, [running, entry("b", 2, 100, model="m1")], 1) is None  # equal
    assert rules.challenge(running, [running, entry("b", 2, 101, model="m1")], 1) is None  # bigger
    smaller = entry("b", 2, 10, model="m1")
    assert rules.challenge(running, [running, smaller], 1) == (smaller, Why.SMALLER)
    other_model = entry("c", 3, 10, model="m2")
    assert rules.challenge(running, [running, other_model], 1) is None
    assert [p.why for p in rules.order([running, other_model], 1)] == [Why.RUNNING, Why.SAME_MODEL]
    other_ctx = entry("d", 4, 10, model="m1", num_ctx=4096)
    assert rules.challenge(running, [running, other_ctx], 1) is None
    urgent_other = entry("e", 5, 10_000, model="m2", priority=3)
    assert rules.challenge(running, [running, urgent_other], 1) == (urgent_other, Why.PRIORITY)
    lower = entry("f", 6, 1, model="m1", priority=-1)
    assert rules.challenge(running, [running, lower], 1) is None
    assert Rules(policy=Policy.FIFO).challenge(running, [running, smaller], 1) is None


def test_a_paused_job_is_listed_but_never_picked() -> None:
    rules = Rules()
    paused = entry("p", 1, 1, attention=True)
    other = entry("o", 2, 50)
    assert rules.next([paused, other], 0).id == "o"  # type: ignore[union-attr]
    assert rules.next([paused], 0) is None
    assert [(p.entry.id, p.why) for p in rules.order([paused, other], 0)] == [
        ("o", Why.NEXT),
        ("p", Why.NEEDS_ATTENTION),
    ]
