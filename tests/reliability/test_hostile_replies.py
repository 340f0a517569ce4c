"""A reply built to make the schema check backtrack forever: that row fails, the daemon stays responsive."""

from __future__ import annotations

import signal
import socket
import subprocess

import httpx
import orjson

from tests.support.emulator import Emulator
from tests.support.factories import Folders, read_jsonl
from tests.support.running import REPO, batchd_cmd
from tests.support.waiting import wait_for

CATASTROPHIC = "a" * 40 + "!"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_redos_reply_fails_its_row_and_the_loop_metrics_and_sigterm_stay_responsive(
    folders: Folders, emulator: Emulator
) -> None:
    folder = folders.inbox / "m"
    folder.mkdir()
    (folder / "pipeline.toml").write_text(
        'user_template = "{text}"\nreply_retries = 0\n'
        'format = {type = "object", required = ["score", "x"], properties = {score = {type = "integer"}, '
        f'x = {{type = "string", pattern = "^(a+)+$", examples = ["{CATASTROPHIC}"]}}}}}}\n'
    )
    (folder / "rows.csv").write_text("text\nhello\nworld\n")
    port = _free_port()
    env = folders.env(emulator.url, BATCHD_METRICS__LISTEN=str(port))
    log = folders.root / "daemon.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(batchd_cmd("run"), env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        out = folders.outbox / "rows"
        wait_for(lambda: (out / "metrics.json").exists() or proc.poll() is not None, timeout=90)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 200
        errors = read_jsonl(out / "errors.jsonl")
        assert len(errors) == 2 and all(e["error"]["code"] == "invalid_reply" for e in errors), errors
        assert "does not match" in errors[0]["error"]["message"]
        assert orjson.loads((out / "metrics.json").read_bytes())["request_counts"]["failed"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
