"""A word when a job ends (``publish.notify``): signed webhooks verified by the ``openai`` SDK's
``client.webhooks.unwrap()`` on a real loopback receiver that is down at first (connection refused, then
503s), across a daemon restart: exactly one verified event id per finished job, the same ``webhook-id``
on every retry; the ``command`` runs once per final state with the job's facts."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest

from batchd.daemon import Daemon
from batchd.journal import JobState
from batchd.publish.notify import sign
from tests.support.emulator import Emulator
from tests.support.factories import Folders, write_jsonl
from tests.support.waiting import until

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver:
    """A webhook endpoint verifying every POST with the openai SDK; ``fail`` first answers get 503."""

    def __init__(self, port: int, fail: int) -> None:
        self.fail = fail
        self.attempts: list[str] = []  # webhook-id of every POST that reached us
        self.verified: list[Any] = []
        self.rejected: list[str] = []
        client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.attempts.append(self.headers["webhook-id"])
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                try:
                    event = client.webhooks.unwrap(body, dict(self.headers.items()))
                except Exception as exc:  # noqa: BLE001 - recorded and answered 400
                    outer.rejected.append(repr(exc))
                    self.send_response(400)
                    self.end_headers()
                    return
                outer.verified.append((event, json.loads(body)))
                self.send_response(200)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_signature_matches_the_standard_webhooks_reference() -> None:
    # the Standard Webhooks spec's own example (github.com/standard-webhooks/standard-webhooks)
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == (
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    )


@pytest.mark.slow
def test_one_verified_event_per_job_with_the_receiver_down_at_first_and_a_restart(
    make_settings: Callable[..., Any], emulator: Emulator, folders: Folders
) -> None:
    port = free_port()
    (folders.root / "secret").write_text(SECRET + "\n")
    ran = folders.root / "ran.jsonl"
    script = (
        "import json, os, sys; "
        f"open({str(ran)!r}, 'a').write(json.dumps({{k: v for k, v in os.environ.items() "
        "if k.startswith('BATCHD_')}) + '\\n')"
    )
    settings = make_settings(
        notify={
            "webhook_url": f"http://127.0.0.1:{port}/hooks/batchd",
            "webhook_secret_file": str(folders.root / "secret"),
            "command": [sys.executable, "-c", script],
        },
        preview={"rows": 0},
    )

    async def first_daemon() -> dict[str, str]:
        daemon = Daemon(settings=settings)
        daemon.notices.backoff = 0.1
        task = asyncio.create_task(daemon.run())
        write_jsonl(folders.inbox / "ok.jsonl", 3)
        (folders.inbox / "bad.bin").write_bytes(b"\x00")  # an unsupported file: published failed
        await until(lambda: (folders.outbox / "ok").exists() and (folders.outbox / "bad").exists(), timeout=30)
        emulator.latency = 0.2
        write_jsonl(folders.inbox / "stop.jsonl", 50, start=100)
        job = await until(lambda: next(iter(daemon.journal.jobs([JobState.RUNNING])), None), timeout=30)
        daemon.journal.request_cancel(job.id)
        await until(lambda: (folders.outbox / "stop").exists(), timeout=30)
        # the receiver is down: connection refused, retried with backoff
        await until(lambda: all(r["attempts"] >= 2 for r in _rows(daemon)), timeout=30)
        jobs = {j.input_name: j.id for j in daemon.journal.jobs()}
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()
        return jobs

    jobs = asyncio.run(first_daemon())
    assert set(jobs) == {"ok.jsonl", "bad.bin", "stop.jsonl"}

    async def second_daemon(receiver: Receiver) -> None:
        daemon = Daemon(settings=settings)  # a restart: what is owed is in the journal
        daemon.notices.backoff = 0.1
        task = asyncio.create_task(daemon.run())
        await until(lambda: len(receiver.verified) >= 3, timeout=30)
        await asyncio.sleep(0.5)  # give a duplicate the chance to show up (none must)
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    with Receiver(port, fail=2) as receiver:
        asyncio.run(second_daemon(receiver))

    assert receiver.rejected == []
    events = [e for e, _ in receiver.verified]
    assert len({e.id for e in events}) == len(events) == 3  # exactly one verified event id per job
    by_job = {raw["data"]["job_id"]: (e, raw) for e, raw in receiver.verified}
    assert set(by_job) == set(jobs.values())
    types = {raw["data"]["input"]: (e.type, raw["data"]["status"]) for e, raw in by_job.values()}
    assert types == {
        "ok.jsonl": ("batch.completed", "completed"),
        "bad.bin": ("batch.failed", "failed"),
        "stop.jsonl": ("batch.cancelled", "cancelled"),
    }
    ok = by_job[jobs["ok.jsonl"]][1]["data"]
    assert ok["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert ok["outbox"] == str(folders.outbox / "ok") and events[0].object == "event"
    # the 503s were retried with the same webhook-id: every attempt's id is one of the three
    assert len(receiver.attempts) == 5 and set(receiver.attempts) == {e.id for e in events}
    # the command ran once per final state, with the job's facts
    runs = [json.loads(line) for line in ran.read_text().splitlines()]
    assert sorted(r["BATCHD_STATUS"] for r in runs) == ["cancelled", "completed", "failed"]
    assert {r["BATCHD_JOB_ID"] for r in runs} == set(jobs.values())
    assert all(r["BATCHD_EVENT"].startswith("batch.") and "BATCHD_CONFIG" not in r for r in runs)
    assert os.path.exists(folders.outbox / "ok")


def _rows(daemon: Daemon) -> list[dict[str, Any]]:
    rows = daemon.journal.due_notifications(now=1e18, limit=100)
    return [r for r in rows if r["channel"] == "webhook"] or [{"attempts": 0}]
