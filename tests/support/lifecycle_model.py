"""The lifecycle property suite's model: scenario actions as Hypothesis strategies, and the invariants.

A scenario is a list of actions (drop a JSONL or CSV, stop with a grace, kill -9, backend down/up,
a burst of faults, a refusal during an outage, cancel, retry, re-drop, re-drop after a pipeline
edit, wait, a storage fault on one store at one phase: ``storage_faults.PAIRS``). ``check_quiet``
states what must hold once everything has settled; it reads only the outbox and the journal, so the
in-process and the subprocess drivers share it.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from batchd.journal import FINISHED, JobState, Journal, ReqState
from tests.support.storage_faults import PAIRS

PROFILE_ENV = "BATCHD_LIFECYCLE_PROFILE"
_COMMON: dict[str, Any] = dict(
    deadline=None,
    database=None,
    print_blob=True,
    # each example is seconds of real time against a real server: never shrink for minutes
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("ci", max_examples=6, derandomize=True, **_COMMON)
settings.register_profile("long", max_examples=int(os.environ.get("BATCHD_LIFECYCLE_EXAMPLES", "60")), **_COMMON)
PROFILE = os.environ.get(PROFILE_ENV, "ci")
#: ``storage``: scenarios drawn mostly from storage faults (the RELIABILITY.md table's run)
FOCUS_ENV = "BATCHD_LIFECYCLE_FOCUS"

CSV_FOLDER = "scoring"
SYSTEM = "You score candidates from 1 to 10."

Action = tuple[Any, ...]

drop = st.tuples(st.just("drop"), st.sampled_from(["jsonl", "csv"]), st.integers(3, 24))
stop = st.tuples(st.just("stop"), st.floats(0, 1), st.floats(0, 0.6))  # grace, delay before the SIGTERM
down = st.tuples(st.just("down"), st.floats(0.1, 1.2))
burst = st.tuples(st.just("burst"), st.sampled_from(["500", "503", "drop", "timeout"]), st.integers(1, 6))
refuse = st.tuples(st.just("refuse"), st.sampled_from([401, 404]))
cancel = st.tuples(st.just("cancel"), st.integers(0, 7), st.floats(0, 0.5))
retry = st.tuples(st.just("retry"), st.integers(0, 7))
redrop = st.tuples(st.just("redrop"), st.integers(0, 7))
edit = st.tuples(st.just("edit"), st.integers(0, 7))
wait = st.tuples(st.just("wait"), st.floats(0, 0.8))
kill = st.tuples(st.just("kill"), st.integers(0, 40))  # after this many more calls
#: (store, phase), how long the disk refuses once the fault met its first write (seconds)
storage = st.tuples(st.just("storage"), st.sampled_from(PAIRS), st.floats(0.1, 1.5))


def scripts(*, kills: bool = False) -> st.SearchStrategy[list[Action]]:
    """A first drop, then up to seven more actions (drops and cancels drawn twice as often: a cancel
    needs a job that is not over yet)."""
    kinds = [drop, drop, stop, down, burst, refuse, cancel, cancel, retry, redrop, edit, wait, storage, storage]
    if os.environ.get(FOCUS_ENV) == "storage":  # storage faults on every store and phase, mixed with the rest
        kinds = [drop, storage, storage, storage, stop, cancel, redrop, wait]
    if kills:
        kinds = [drop, drop, kill, kill, down, burst, cancel, redrop, edit, wait]
    return st.tuples(drop, st.lists(st.one_of(*kinds), min_size=1, max_size=7)).map(lambda t: [t[0], *t[1]])


# -- files ------------------------------------------------------------------------------------


def jsonl_bytes(n: int, tag: str) -> bytes:
    lines = []
    for i in range(n):
        body = {
            "model": "gemma3:4b",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{tag} row {i}: " + "y" * 30},
            ],
        }
        lines.append(
            orjson.dumps({"custom_id": f"{tag}-{i:03d}", "method": "POST", "url": "/v1/chat/completions", "body": body})
        )
    return b"\n".join(lines) + b"\n"


def csv_bytes(n: int, tag: str) -> bytes:
    rows = ["id,name,text"] + [f"{tag}-{i:03d},Person {i},Writes {tag} code number {i}." for i in range(n)]
    return ("\n".join(rows) + "\n").encode()


def pipeline_toml(version: int) -> str:
    return f'system_prompt = "{SYSTEM} (rubric v{version})"\nuser_template = "{{name}}: {{text}}"\nid_column = "id"\n'


@dataclass
class Tally:
    """What the scenarios did, over all examples (the long profile reports it)."""

    examples: int = 0
    actions: Counter[str] = field(default_factory=Counter)
    jobs: Counter[str] = field(default_factory=Counter)
    cancel_latency_max: float = 0.0
    violations: int = 0
    #: storage faults that met a write, by "store@phase" (an armed one whose phase passed is "missed")
    storage: Counter[str] = field(default_factory=Counter)
    #: the longest time from a fault's end to every job final (the bounded-time invariant)
    settle_after_fault_max: float = 0.0

    @property
    def faults(self) -> int:
        a = self.actions
        return a["stop"] + a["kill"] + a["down"] + a["burst"] + a["refuse"] + a["cancel"] + a["storage"]

    def line(self) -> str:
        return (
            f"lifecycle: examples={self.examples} faults={self.faults} actions={dict(self.actions)} "
            f"jobs={dict(self.jobs)} cancel_latency_max={self.cancel_latency_max:.2f}s "
            f"storage={dict(sorted(self.storage.items()))} settle_after_fault_max={self.settle_after_fault_max:.2f}s "
            f"violations={self.violations}"
        )


# -- invariants -----------------------------------------------------------------------------------


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def check_quiet(outbox: Path, journal: Journal, *, drops: int, tally: Tally | None = None) -> None:
    """Everything has settled: every job final and published, every line accounted for once."""
    jobs = journal.jobs(limit=100_000)
    assert len([j for j in jobs if j.retry_of is None]) == drops, "every dropped file is exactly one job"
    leftovers = [p.name for p in outbox.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"half-published folders: {leftovers}"
    for job in jobs:
        assert job.state in FINISHED, f"{job.id} is {job.state.value}, not final"
        assert job.outbox_name, f"{job.id} was never published"
        folder = outbox / job.outbox_name
        m = orjson.loads((folder / "metrics.json").read_bytes())
        assert m["job_id"] == job.id and m["status"] == job.state.value, "journal and metrics.json agree"
        assert job.final is not None and job.final.value == job.state.value
        if tally is not None:
            tally.jobs[job.state.value] += 1
        if job.state is JobState.DUPLICATE:
            assert job.duplicate_of and not (folder / "results.jsonl").exists()
            continue
        _check_lines(folder, m, journal, job.id, job.state)


def _check_lines(folder: Path, m: dict[str, Any], journal: Journal, job_id: str, state: JobState) -> None:
    results = _lines(folder / "results.jsonl")
    errors = [e for e in _lines(folder / "errors.jsonl") if e.get("custom_id") is not None]
    got_r = [r["custom_id"] for r in results]
    got_e = [e["custom_id"] for e in errors]
    assert len(got_r) == len(set(got_r)) and len(got_e) == len(set(got_e)), "a line written twice"
    assert not set(got_r) & set(got_e), "a line in both results and errors"
    reqs = list(journal.iter_requests(job_id))
    by_state: dict[ReqState, set[str]] = {}
    for r in reqs:
        by_state.setdefault(r.state, set()).add(str(r.custom_id))
    counts = m["request_counts"]
    assert counts["total"] == len(reqs)
    assert counts["completed"] == len(results) == len(by_state.get(ReqState.DONE, ()))
    assert (
        counts["failed"]
        == len(errors)
        == len(by_state.get(ReqState.FAILED, ())) + len(by_state.get(ReqState.INVALID, ()))
    )
    assert set(got_r) == by_state.get(ReqState.DONE, set())
    unrun = by_state.get(ReqState.QUEUED, set()) | by_state.get(ReqState.RUNNING, set())
    assert not unrun, f"{state.value} job with requests left unrun: {sorted(unrun)[:5]}"
    every = {str(r.custom_id) for r in reqs}
    if state is JobState.CANCELLED:
        # what ran is in exactly one file; what did not is `skipped` (scores.csv lists it)
        assert every - set(got_r) - set(got_e) == by_state.get(ReqState.SKIPPED, set())
    else:
        assert set(got_r) | set(got_e) == every, "a valid line in neither results nor errors"
        assert not by_state.get(ReqState.SKIPPED), f"{state.value} job with skipped requests"
