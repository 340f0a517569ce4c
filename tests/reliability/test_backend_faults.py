"""Backend faults from the emulator: every request ends succeeded or with a precise error.

Random 500/503 (10%), timeouts (5%), dropped connections, replies that are not
JSON, an outage and a restart that changes /api/ps, all in one run. Retries are
counted by cause in metrics.json, and no request is sent more than
max_attempts times (sends refused during an outage never reach the server).
"""

from __future__ import annotations

import os
import threading
from collections import Counter

import orjson
import pytest

from tests.support.emulator import Emulator, last_user_content
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import run_batchd

SCALE = float(os.environ.get("BATCHD_RELIABILITY_SCALE", "1"))


@pytest.mark.slow
def test_mixed_faults_and_an_outage(folders: Folders, emulator: Emulator) -> None:
    n = int(600 * SCALE)
    outage = 60.0 if SCALE > 1 else 6.0  # the 60 s outage at full size; 6 s in CI
    ids = write_jsonl(folders.inbox / "f.jsonl", n)
    emulator.chaos(seed=7, fail500=0.05, fail503=0.05, timeout=0.05, drop=0.02, garbage=0.02, timeout_seconds=3)

    def restart() -> None:
        while emulator.chat_count < n // 3:
            threading.Event().wait(0.02)
        emulator.down()
        threading.Event().wait(outage)
        emulator.set_ps(size=6_000_000_000, size_vram=4_000_000_000)  # came back partly offloaded
        emulator.up()

    t = threading.Thread(target=restart, daemon=True)
    t.start()
    env = folders.env(
        emulator.url,
        BATCHD_BACKEND__LANES="4",
        BATCHD_BACKEND__MAX_ATTEMPTS="6",
        BATCHD_BACKEND__TIMEOUT_SECONDS="1",
        BATCHD_CONTEXT__MODE="isolated",
    )
    proc = run_batchd(env, "run", "--once", timeout=600)
    t.join(timeout=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = folders.outbox / "f"
    m = orjson.loads((out / "metrics.json").read_bytes())
    results, errors = read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl")
    assert sorted([r["custom_id"] for r in results] + [e["custom_id"] for e in errors]) == sorted(ids)
    for e in errors:  # a precise error, never a vague one
        detail = e["error"] or e["response"]["body"]["error"]
        assert detail["code"] and detail["message"]
    causes = m["retries"]["by_cause"]
    assert {"server_error", "busy", "timeout"} <= set(causes), causes
    assert m["outages"]["count"] >= 1
    assert m["request_counts"]["completed"] >= n * 0.95
    sends = Counter(last_user_content(c["messages"]) for c in emulator.calls if "messages" in c)
    assert max(sends.values()) <= 6
    print(
        f"faults: requests={n} completed={m['request_counts']['completed']} failed={len(errors)} "
        f"lost=0 duplicated=0 retries={causes} outage={m['outages']} max_sends={max(sends.values())}"
    )
