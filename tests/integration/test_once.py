"""`batchd run --once` as a user runs it: env vars, a real emulator, a real outbox."""

from __future__ import annotations

import csv
import os
import stat
import threading

import orjson

from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl, write_jsonl
from tests.support.running import run_batchd


def _metrics(folder) -> dict:  # type: ignore[no-untyped-def]
    return orjson.loads((folder / "metrics.json").read_bytes())


def test_jsonl_with_invalid_lines(folders: Folders, emulator: Emulator) -> None:
    ids = write_jsonl(folders.inbox / "batch.jsonl", 1000, bad_every=100)
    proc = run_batchd(folders.env(emulator.url), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    out = folders.outbox / "batch"
    assert not (folders.inbox / "batch.jsonl").exists()
    results, errors = read_jsonl(out / "results.jsonl"), read_jsonl(out / "errors.jsonl")
    assert len(results) == 990 and len(errors) == 10
    assert [e["line"] for e in errors] == [100 * k for k in range(1, 11)]
    assert all(e["error"]["code"] == "invalid_url" for e in errors)
    # input order, OpenAI batch output shape
    assert [r["custom_id"] for r in results] == [c for i, c in enumerate(ids) if i % 100 != 99]
    first = results[0]
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["prompt_tokens"] > 0
    m = _metrics(out)
    assert m["status"] == "completed"
    assert m["request_counts"] == {"total": 1000, "completed": 990, "failed": 10}
    assert m["input"] == "batch.jsonl" and len(m["sha256"]) == 64
    assert (out / "input.jsonl").read_bytes().count(b"\n") == 1000
    with (out / "scores.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1000 and rows[0]["custom_id"] == ids[0]
    # every call pinned the same context and refused silent truncation
    assert {c["options"]["num_ctx"] for c in emulator.calls} == {8192}
    assert all(c["truncate"] is False and c["shift"] is False and c["stream"] is False for c in emulator.calls)
    # the published folder and files are private to the service and its group
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o750
    assert stat.S_IMODE(os.stat(out / "results.jsonl").st_mode) == 0o640
    assert not any(p.name.endswith(".partial") for p in folders.outbox.iterdir())


def test_csv_through_the_default_pipeline(folders: Folders, emulator: Emulator) -> None:
    (folders.root / "batchd.toml").write_text(
        '[pipeline]\nsystem_prompt = "Score the candidate 1-10. Reply as JSON."\n'
        'user_template = "Candidate {name}, {title}"\nid_column = "id"\npassthrough_columns = ["name"]\n'
        '[pipeline.format]\ntype = "object"\nrequired = ["score"]\n'
        '[pipeline.format.properties.score]\ntype = "integer"\nminimum = 1\nmaximum = 10\n'
    )
    (folders.inbox / "people.csv").write_bytes(
        '\ufeffid,name,title\r\nA1,"Zoë, Jr",Engineer\r\nA2,Bob,"=HYPERLINK(""x"")"\r\n'.encode()
    )
    proc = run_batchd(folders.env(emulator.url), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    out = folders.outbox / "people"
    with (out / "scores.csv").open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["custom_id"] for r in rows] == ["A1", "A2"]
    assert rows[0]["name"] == "Zoë, Jr"
    assert all(r["status"] == "ok" and 1 <= int(r["score"]) <= 10 for r in rows)
    sent = emulator.calls[0]["messages"]
    assert sent[0] == {"role": "system", "content": "Score the candidate 1-10. Reply as JSON."}
    assert sent[-1]["content"] == "Candidate Zoë, Jr, Engineer"
    assert emulator.calls[0]["format"]["properties"]["score"]["maximum"] == 10
    assert _metrics(out)["pipeline"] == "default"


def test_same_file_again_is_a_duplicate(folders: Folders, emulator: Emulator) -> None:
    write_jsonl(folders.inbox / "a.jsonl", 5)
    assert run_batchd(folders.env(emulator.url), "run", "--once").returncode == 0
    first = _metrics(folders.outbox / "a")
    write_jsonl(folders.inbox / "a.jsonl", 5)
    calls = emulator.chat_count
    assert run_batchd(folders.env(emulator.url), "run", "--once").returncode == 0
    dup = _metrics(folders.outbox / "a.2")
    assert dup["status"] == "duplicate" and dup["duplicate_of"] == first["job_id"]
    assert emulator.chat_count == calls  # nothing was sent again


def test_missing_model_fails_fast_not_once_per_line(folders: Folders, emulator: Emulator) -> None:
    write_jsonl(folders.inbox / "m.jsonl", 300, model="no-such-model")
    proc = run_batchd(folders.env(emulator.url, BATCHD_BACKEND__MODEL="no-such-model"), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    m = _metrics(folders.outbox / "m")
    assert m["status"] == "failed"
    assert "not found" in m["error"]["message"]
    assert emulator.chat_count <= 2
    # Fast, yet every line accounted for: each one fails with the job's reason, plus the job's own line.
    errors = read_jsonl(folders.outbox / "m" / "errors.jsonl")
    assert len(errors) == 301 and {e["error"]["code"] for e in errors} == {"model_not_found"}
    assert sorted(e["custom_id"] for e in errors if e["custom_id"]) == [f"req-{i:06d}" for i in range(300)]


def test_server_errors_are_retried_then_succeed(folders: Folders, emulator: Emulator) -> None:
    write_jsonl(folders.inbox / "r.jsonl", 20)
    # 4 failures in a row: one under the default max_attempts (5)
    emulator.fail_next(503, count=2)
    emulator.fail_next(500, count=1, body={"error": "something broke"})
    emulator.fail_next(500, count=1)  # "llama runner process has terminated": counted as OOM
    proc = run_batchd(folders.env(emulator.url), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    m = _metrics(folders.outbox / "r")
    assert m["request_counts"]["completed"] == 20
    assert m["retries"]["by_cause"] == {"busy": 2, "server_error": 1, "oom": 1}


def test_a_request_that_keeps_failing_gives_up_after_max_attempts(folders: Folders, emulator: Emulator) -> None:
    (folders.inbox / "f.jsonl").write_bytes(
        orjson.dumps(
            {
                "custom_id": "doomed",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "<<FAIL:500>>"}]},
            }
        )
        + b"\n"
    )
    proc = run_batchd(folders.env(emulator.url, BATCHD_BACKEND__MAX_ATTEMPTS="3"), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    (err,) = read_jsonl(folders.outbox / "f" / "errors.jsonl")
    assert err["response"]["status_code"] == 500 and err["custom_id"] == "doomed"
    assert emulator.chat_count == 3


def test_outage_in_the_middle_pauses_and_completes(folders: Folders, emulator: Emulator) -> None:
    ids = write_jsonl(folders.inbox / "o.jsonl", 400)
    emulator.latency = 0.01

    def outage() -> None:
        while emulator.chat_count < 100:
            threading.Event().wait(0.01)
        emulator.down()
        threading.Event().wait(10)  # Ollama stopped for 10 s
        emulator.up()

    t = threading.Thread(target=outage)
    t.start()
    proc = run_batchd(folders.env(emulator.url, BATCHD_BACKEND__MAX_ATTEMPTS="2"), "run", "--once", timeout=120)
    t.join()
    assert proc.returncode == 0, proc.stderr
    m = _metrics(folders.outbox / "o")
    assert m["request_counts"] == {"total": 400, "completed": 400, "failed": 0}
    assert [r["custom_id"] for r in read_jsonl(folders.outbox / "o" / "results.jsonl")] == ids
    assert m["outages"]["count"] >= 1 and m["outages"]["seconds"] >= 5


def test_a_file_that_cannot_be_read_says_why_in_errors_jsonl(folders: Folders, emulator: Emulator) -> None:
    (folders.inbox / "empty.jsonl").write_bytes(b"")
    (folders.inbox / "photo.csv").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (folders.inbox / "notes.txt").write_text("hello")
    proc = run_batchd(folders.env(emulator.url), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    for stem, code in (("empty", "empty_file"), ("photo", "binary_file"), ("notes", "unsupported_type")):
        (err,) = read_jsonl(folders.outbox / stem / "errors.jsonl")
        assert err["error"]["code"] == code and err["error"]["message"]
        assert _metrics(folders.outbox / stem)["status"] == "failed"
    assert (folders.inbox / "notes.txt").exists()  # refused files are left alone


def test_once_logs_progress_and_retries(folders: Folders, emulator: Emulator) -> None:
    write_jsonl(folders.inbox / "p.jsonl", 300)
    emulator.latency = 0.01
    emulator.fail_next(503, count=1)
    proc = run_batchd(folders.env(emulator.url, BATCHD_LOG__PROGRESS_EVERY_PERCENT="25"), "run", "--once")
    assert proc.returncode == 0, proc.stderr
    events = [orjson.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    progress = [e for e in events if e["event"] == "job_progress"]
    assert progress and all(e["input"] == "p.jsonl" and 0 < e["percent"] <= 100 for e in progress)
    (retry,) = [e for e in events if e["event"] == "request_retrying"]
    assert retry["code"] == "server_busy" and retry["attempt"] == 1
