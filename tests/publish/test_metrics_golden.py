"""``metrics.json`` byte for byte against golden files written from the code before it was typed.

Two cases: a daemon run against the emulator (the envelope the outbox adds, a rejected file's
short form) and a ``JobMetrics`` filled by hand through its public methods so every section
carries values. Only what varies by nature is normalised (ids, timestamps, durations, rates).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batchd.config import Settings
from batchd.metrics import JobMetrics
from tests.support.factories import Folders, write_jsonl
from tests.support.running import run_daemon_once

GOLDEN = Path(__file__).parent / "golden"
#: set to write the golden files afresh (only from code whose output is the reference)
REGEN = os.environ.get("BATCHD_REGEN_GOLDEN") == "1"

_VARYING_TOP = ("job_id", "created_at", "started_at", "finished_at")
_VARYING_PERF = (
    "elapsed_seconds",
    "requests_per_second",
    "prompt_tokens_per_second",
    "completion_tokens_per_second",
    "latency_p50",
    "latency_p95",
    "latency_max",
)


def _normalised(doc: dict[str, Any]) -> dict[str, Any]:
    for key in _VARYING_TOP:
        if doc.get(key) is not None:
            doc[key] = f"<{key}>"
    perf = doc.get("performance")
    if perf is not None:
        for key in _VARYING_PERF:
            if perf[key] is not None:
                perf[key] = f"<{key}>"
    for change in doc.get("lanes_series", []):
        change[0] = "<time>"
    fingerprint = (doc.get("server") or {}).get("fingerprint")
    if fingerprint is not None:  # the emulator's port
        fingerprint["details"]["host"] = "<host>"
    return doc


def _compare(name: str, raw: bytes) -> None:
    """The keys' order and the layout count too: the bytes are compared after normalising."""
    text = orjson.dumps(_normalised(orjson.loads(raw)), option=orjson.OPT_INDENT_2) + b"\n"
    path = GOLDEN / name
    if REGEN:
        path.write_bytes(text)
    assert text.decode() == path.read_text()


def test_metrics_json_of_a_daemon_run_matches_the_golden_files(
    folders: Folders, make_settings: Callable[..., Settings]
) -> None:
    write_jsonl(folders.inbox / "batch.jsonl", 20, bad_every=7)
    (folders.inbox / "notes.txt").write_text("not a batch\n")
    run_daemon_once(make_settings())
    _compare("metrics.json", (folders.outbox / "batch" / "metrics.json").read_bytes())
    _compare("metrics.rejected.json", (folders.outbox / "notes" / "metrics.json").read_bytes())


def _hand_built() -> JobMetrics:
    m = JobMetrics()
    for i in range(40):
        m.add_reply(prompt_tokens=100 + i, completion_tokens=10 + i % 7, latency=0.05 * (i % 13 + 1), cached=i % 3)
    m.isolated_prompt_tokens = 9000
    m.requests_sent = 44
    m.chars_per_token = 3.7
    m.num_ctx = 8192
    m.trim_at = 0.8
    m.trims.update({"history": 3, "prefix": 1})
    m.truncations_detected = 2
    m.conversation_not_paying = {"evaluated": 5000, "isolated": 4000}
    m.note_vram(0.5, "nvml", total=24e9, used_bytes=12_000_000_000, processes=[[123, 11_000_000_000]])
    m.note_vram(0.75, "nvml", used_bytes=18_000_000_000)
    m.note_vram(0.6, "nvml", used_bytes=14_000_000_000)
    m.vram_pressure_events = 1
    m.oom_events = 1
    m.offload = {"size": 10, "size_vram": 8}
    m.lanes_mode = "auto"
    m.note_lanes(1, "start", at=1000.0)
    m.note_lanes(4, "probe", at=1001.5)
    m.note_lanes(2, "busy", at=1002.25)
    m.lanes_min = 1
    m.server_version = "0.12.0"
    m.reloads = 1
    m.runner_options_stripped = ["num_gpu", "use_mmap"]
    m.retries.update({"busy": 3, "timeout": 1, "prompt_truncated": 2})
    m.outages = 2
    m.outage_seconds = 12.345
    for ok, cause in ((True, None), (False, "invalid_reply"), (False, None)):
        m.count_outcome(ok, cause)
    return m


def test_metrics_summary_of_a_full_job_matches_the_golden_file() -> None:
    raw = orjson.dumps(_hand_built().summary(done=40, elapsed=12.5), option=orjson.OPT_INDENT_2)
    path = GOLDEN / "summary.full.json"
    if REGEN:
        path.write_bytes(raw + b"\n")
    assert (raw + b"\n").decode() == path.read_text()


def test_metrics_summary_of_an_empty_job_matches_the_golden_file() -> None:
    raw = orjson.dumps(JobMetrics().summary(done=0, elapsed=0.0), option=orjson.OPT_INDENT_2)
    path = GOLDEN / "summary.empty.json"
    if REGEN:
        path.write_bytes(raw + b"\n")
    assert (raw + b"\n").decode() == path.read_text()
