"""What users see while a real ``batchd run`` works: the outbox status page in Chromium, its JSON
beside ``batchd status --json``, and the Prometheus endpoint scraped over loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchd.status.page import STATUS_HTML, STATUS_JSON
from tests.support.browser import chromium, read_png, screenshot
from tests.support.emulator import Emulator
from tests.support.factories import Folders
from tests.support.running import REPO, batchd_cmd, run_batchd
from tests.support.waiting import wait_for

#: the progress bar's fill colour in statuspage.CSS (.fill), used nowhere else on the page
FILL = (0x2F, 0x7D, 0xE1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drop(folders: Folders, name: str, n: int, *, fail_every: int = 0, invalid_every: int = 0) -> None:
    """A JSONL input; every ``fail_every``-th row is refused by the server (400), every
    ``invalid_every``-th line is not a chat request at all. Written aside, then renamed in."""
    part = folders.root / f"{name}.part"
    with part.open("wb") as fh:
        for i in range(n):
            if invalid_every and i % invalid_every == invalid_every - 1:
                fh.write(
                    orjson.dumps(
                        {
                            "custom_id": f"r{i}",
                            "method": "POST",
                            "url": "/v1/audio/transcriptions",
                            "body": {"model": "gemma3:4b", "input": "x"},
                        }
                    )
                    + b"\n"
                )
                continue
            text = "<<FAIL:400>>" if fail_every and i % fail_every == fail_every - 1 else f"Question {i}?"
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": f"r{i}",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": {
                            "model": "gemma3:4b",
                            "messages": [
                                {"role": "system", "content": "You are terse."},
                                {"role": "user", "content": text},
                            ],
                        },
                    }
                )
                + b"\n"
            )
    os.rename(part, folders.inbox / name)


class Daemon:
    def __init__(self, folders: Folders, env: dict[str, str]) -> None:
        self.folders, self.env = folders, env
        self.log = folders.root / "daemon.log"
        with self.log.open("wb") as fh:
            self.popen = subprocess.Popen(batchd_cmd("run"), env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        wait_for(lambda: b"daemon_ready" in self.log.read_bytes() or self.popen.poll() is not None, timeout=60)
        assert self.popen.poll() is None, self.log.read_text()[-3000:]

    def page(self) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads((self.folders.outbox / STATUS_JSON).read_bytes())
        return data

    def status(self) -> dict[str, Any]:
        r = run_batchd(self.env, "status", "--json", timeout=60)
        assert r.returncode == 0, r.stderr
        views: dict[str, Any] = orjson.loads(r.stdout)
        return views

    def running(self, at_least: int = 1) -> dict[str, Any] | None:
        if not (self.folders.outbox / STATUS_JSON).exists():
            return None
        run = [v for v in self.page()["active"] if v["state"] == "running"]
        return run[0] if run and run[0]["finished"] >= at_least else None

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@pytest.fixture
def start(folders: Folders, emulator: Emulator) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def go(**env: str) -> Daemon:
        d = Daemon(
            folders,
            folders.env(
                emulator.url,
                BATCHD_BACKEND__LANES="16",
                BATCHD_CONTEXT__MODE="isolated",
                BATCHD_STATUS_PAGE__INTERVAL_SECONDS="1",
                **env,
            ),
        )
        started.append(d)
        return d

    yield go
    for d in started:
        d.stop()


# -- the status page -----------------------------------------------------------------------


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_status_page_moves_in_a_browser_and_agrees_with_batchd_status(
    start: Callable[..., Daemon], folders: Folders, emulator: Emulator, tmp_path: Path
) -> None:
    emulator.latency = 0.03  # 16 lanes: a few hundred req/s at most, so 20,000 rows take minutes
    d = start()
    _drop(folders, "big.jsonl", 20_000, fail_every=500)
    first = wait_for(lambda: d.running(at_least=200), timeout=90)
    assert first["total"] == 20_000 and first["input"] == "big.jsonl"

    shot1, p1 = _screenshot(folders.outbox / STATUS_HTML, tmp_path / "one")
    wait_for(lambda: (d.running() or {}).get("progress", 0) >= p1 + 0.03, timeout=90)
    shot2, p2 = _screenshot(folders.outbox / STATUS_HTML, tmp_path / "two")
    fill1, fill2 = _fill_pixels(shot1), _fill_pixels(shot2)
    assert 0 < fill1 < fill2, (fill1, fill2, p1, p2)
    assert p2 > p1

    # The JSON beside the page says what `batchd status --json` says, a second or so older.
    page = d.page()
    views = d.status()
    assert time.time() - page["generated_at_unix"] < 10 and page["daemon"] == "running"
    assert [(v["job_id"], v["input"], v["state"], v["total"]) for v in page["active"]] == [
        (v["job_id"], v["input"], v["state"], v["total"]) for v in views["active"]
    ]
    mine, theirs = page["active"][0], views["active"][0]
    assert 0 < mine["finished"] <= theirs["finished"] and mine["failed"] <= theirs["failed"]
    assert mine["req_per_s"] and mine["eta_seconds"] and theirs["eta_seconds"]
    assert set(mine) == set(theirs)

    # Cancel: at once (a state change) the page lists it as finished, with a link to its folder.
    r = run_batchd(d.env, "cancel", mine["job_id"], timeout=60)
    assert r.returncode == 0, r.stderr
    done = wait_for(lambda: [v for v in d.page()["recent"] if v["state"] == "cancelled"], timeout=90)
    assert done[0]["outbox"] == "big" and (folders.outbox / "big" / "metrics.json").exists()
    assert d.page()["active"] == [] and d.page()["recent"] == d.status()["recent"]
    html = (folders.outbox / STATUS_HTML).read_text()
    assert "<a href='big/'>big/</a>" in html and "cancelled" in html
    d.stop()
    assert d.page()["daemon"] == "stopped"


def _screenshot(page: Path, work: Path) -> tuple[bytes, float]:
    """A headless Chromium screenshot of the page, and the progress its JSON showed just before."""
    work.mkdir()
    progress = orjson.loads((page.parent / STATUS_JSON).read_bytes())["active"][0]["progress"]
    shot = work / "shot.png"
    proc = screenshot(page, shot, home=work, size="1200,700", extra=("--force-color-profile=srgb", "--hide-scrollbars"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return shot.read_bytes(), progress


def _fill_pixels(png: bytes) -> int:
    """How many pixels have the progress bar's fill colour (a PNG decoded by hand, no Pillow)."""
    image = read_png(png)
    raw, width, height, channels = image.raw, image.width, image.height, image.channels
    stride = width * channels
    prev = bytearray(stride)
    count = 0
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):  # undo the PNG row filter (None, Sub, Up, Average, Paeth)
            a = line[i - channels] if i >= channels else 0
            b = prev[i]
            c = prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        for x in range(0, stride, channels):
            if all(abs(line[x + k] - FILL[k]) <= 3 for k in range(3)):
                count += 1
        prev = line
    return count


# -- Prometheus ------------------------------------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _sum(snap: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in snap.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_endpoint_during_a_run_agrees_with_metrics_json(
    start: Callable[..., Daemon], folders: Folders, emulator: Emulator
) -> None:
    emulator.latency = 0.02
    port = _free_port()
    textfile = folders.root / "node_exporter" / "batchd.prom"
    textfile.parent.mkdir()
    d = start(
        BATCHD_METRICS__LISTEN=f"127.0.0.1:{port}",
        BATCHD_METRICS__INTERVAL_SECONDS="0.5",
        BATCHD_METRICS__TEXTFILE=str(textfile),
        BATCHD_VRAM__SOURCE="ollama",
    )
    idle = _scrape(port)
    assert _sum(idle, "batchd_job_running") == 0 and _sum(idle, "batchd_build_info") == 1
    emulator.fail_next(503, count=5)  # retried: batchd_request_retries_total{cause="busy"}
    _drop(folders, "m.jsonl", 3000, fail_every=100, invalid_every=250)

    def mid_run() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        snap = _scrape(port)
        moving = _sum(snap, "batchd_requests_total", status="completed") >= 100
        return snap if moving and _sum(snap, "batchd_job_running") == 1 else None

    during = wait_for(mid_run, timeout=90, interval=0.2)
    assert 0 < _sum(during, "batchd_job_progress_ratio") < 1
    assert _sum(during, "batchd_lanes") == 16 and _sum(during, "batchd_backend_up") == 1
    assert _sum(during, "batchd_queue_requests") > 0
    assert _sum(during, "batchd_request_latency_seconds_count") > 0
    # Ollama's /api/ps (the emulator's) tells the model's VRAM, not the card's: used is known, total is not.
    assert _sum(during, "batchd_vram_used_bytes") == emulator.ps["size_vram"]
    assert not [n for n, _ in during if n == "batchd_vram_total_bytes"]

    metrics_json = folders.outbox / "m" / "metrics.json"
    wait_for(metrics_json.exists, timeout=180)
    m = orjson.loads(metrics_json.read_bytes())
    # Counters move as things happen; the queue gauges are recomputed off the request path (live.py's worker,
    # poked at the publish), so a scrape right after the publish may still show the last tick's queue.
    end = wait_for(
        lambda: (
            (s := _scrape(port))
            and _sum(s, "batchd_jobs_finished_total") == 1
            and _sum(s, "batchd_queue_requests") == 0
            and s
        ),
        timeout=30,
    )
    counts = m["request_counts"]
    invalid = sum(1 for i in range(3000) if i % 250 == 249)
    refused = sum(1 for i in range(3000) if i % 100 == 99 and i % 250 != 249)
    assert (counts["failed"], counts["completed"]) == (invalid + refused, 3000 - invalid - refused)
    assert _sum(end, "batchd_requests_total", status="completed") == counts["completed"]
    assert _sum(end, "batchd_requests_total", status="failed") == counts["failed"]
    assert _sum(end, "batchd_requests_total", status="failed", cause="bad_request") == refused
    assert _sum(end, "batchd_requests_total", status="failed", cause="invalid_input") == invalid
    assert _sum(end, "batchd_prompt_tokens_total") == m["tokens"]["prompt"] > 0
    assert _sum(end, "batchd_completion_tokens_total") == m["tokens"]["completion"] > 0
    retries = {dict(ls)["cause"]: v for (n, ls), v in end.items() if n == "batchd_request_retries_total"}
    assert retries == m["retries"]["by_cause"] and retries.get("busy") == 5
    trims = {dict(ls)["strategy"]: v for (n, ls), v in end.items() if n == "batchd_context_trims_total"}
    assert trims == m["context"]["trims"]
    assert _sum(end, "batchd_request_latency_seconds_count") == counts["completed"]
    assert _sum(end, "batchd_jobs_finished_total", status="completed") == 1
    assert _sum(end, "batchd_job_running") == 0 and _sum(end, "batchd_queue_requests") == 0
    # The node_exporter textfile carries the same, and its last rewrite comes as the daemon stops.
    d.stop()
    final = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for f in text_string_to_metric_families(textfile.read_text())
        for x in f.samples
    }
    assert _sum(final, "batchd_requests_total", status="completed") == counts["completed"]
    assert _sum(final, "batchd_prompt_tokens_total") == m["tokens"]["prompt"]
    assert [p.name for p in textfile.parent.iterdir()] == ["batchd.prom"]
