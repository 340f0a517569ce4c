"""Prometheus exposition: counters across jobs, naming conventions, outputs, and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import socket
import stat
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batchd.config import MetricsSettings
from batchd.errors import ConfigError
from batchd.metrics import LATENCY_BUCKETS, JobMetrics
from batchd.status.prom import KNOWN, Exporter, Live, Queue, parse_listen
from tests.support.factories import Folders
from tests.support.running import REPO, run_batchd

DASHBOARD = REPO / "packaging" / "grafana-dashboard.json"


def samples(text: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition, parsed by prometheus_client."""
    raw = text.decode() if isinstance(text, bytes) else text
    out = {}
    for family in text_string_to_metric_families(raw):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def _reply(m: JobMetrics, latency: float = 0.3) -> None:
    m.add_reply(prompt_tokens=10, completion_tokens=4, latency=latency)
    m.count_outcome(True)


def test_counters_count_this_process_only_and_add_up_across_jobs() -> None:
    ex = Exporter(MetricsSettings())
    # A job resumed after a restart: what it counted before is not this process's.
    resumed = JobMetrics.from_state(
        {"prompt_tokens": 9000, "completed": 700, "retries": {"timeout": 9}, "failures": {"timeout": 4}}
    )
    ex.job_started(resumed)
    _reply(resumed)
    _reply(resumed, latency=7.0)
    resumed.count_outcome(False, "timeout")
    resumed.retries["timeout"] += 2
    resumed.retries["context_overflow"] += 1
    resumed.truncations_detected += 1
    resumed.trims["sliding"] += 3
    ex.refresh()
    snap = samples(ex.exposition())
    assert value(snap, "batchd_requests_total", status="completed", cause="none") == 2
    assert value(snap, "batchd_requests_total", status="failed", cause="timeout") == 1
    assert value(snap, "batchd_prompt_tokens_total") == 20 and value(snap, "batchd_completion_tokens_total") == 8
    assert value(snap, "batchd_request_retries_total", cause="timeout") == 2
    assert value(snap, "batchd_context_overflows_total") == 2  # a refused prompt and a cut one
    assert value(snap, "batchd_context_trims_total", strategy="sliding") == 3
    assert value(snap, "batchd_request_latency_seconds_count") == 2
    assert value(snap, "batchd_request_latency_seconds_sum") == pytest.approx(7.3)
    assert value(snap, "batchd_request_latency_seconds_bucket", le="0.5") == 1
    assert value(snap, "batchd_request_latency_seconds_bucket", le="10.0") == 2
    ex.job_ended()
    second = JobMetrics()
    ex.job_started(second)
    _reply(second)
    ex.job_ended()
    ex.job_published("cancelled", {"done": 1, "invalid": 3, "skipped": 5})
    snap = samples(ex.exposition())
    assert value(snap, "batchd_requests_total", status="completed", cause="none") == 3
    assert value(snap, "batchd_requests_total", status="failed", cause="invalid_input") == 3
    assert value(snap, "batchd_requests_total", status="skipped", cause="cancelled") == 5
    assert value(snap, "batchd_jobs_finished_total", status="cancelled") == 1
    assert value(snap, "batchd_prompt_tokens_total") == 30


def test_names_units_and_labels_follow_prometheus_conventions() -> None:
    ex = Exporter(MetricsSettings())
    m = JobMetrics()
    ex.job_started(m)
    m.count_outcome(False, "some_code_a_server_made_up")
    m.retries["timeout"] += 1
    ex.set_live(
        Live(
            job_running=True,
            lanes=4,
            lanes_active=3,
            lanes_in_use=2,
            backend_up=True,
            vram_used_bytes=5 * 2**30,
            vram_total_bytes=16 * 2**30,
        )
    )
    ex.set_queue(Queue(jobs=2, requests=1234, progress=0.25, eta_seconds=600))
    ex.refresh()
    families = list(text_string_to_metric_families(ex.exposition().decode()))
    assert families
    for family in families:
        assert family.name.startswith("batchd_"), family.name
        for s in family.samples:
            assert not {"custom_id", "input", "file", "job_id", "job"} & set(s.labels), s
            if family.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            if "cause" in s.labels:
                assert s.labels["cause"] in KNOWN | {"none", "other"}
    snap = samples(ex.exposition())
    assert value(snap, "batchd_requests_total", status="failed", cause="other") == 1  # bounded label values
    assert value(snap, "batchd_vram_total_bytes") == 16 * 2**30
    assert value(snap, "batchd_job_eta_seconds") == 600 and value(snap, "batchd_job_progress_ratio") == 0.25
    assert value(snap, "batchd_queue_requests") == 1234 and value(snap, "batchd_backend_up") == 1
    assert value(snap, "batchd_lanes_in_use") == 2
    buckets = [labels for name, labels in snap if name == "batchd_request_latency_seconds_bucket"]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1


@pytest.mark.parametrize(
    ("listen", "want"),
    [
        ("9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9100", ("0.0.0.0", 9100)),
        ("[::1]:9464", ("::1", 9464)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_listen_forms(listen: str, want: tuple[str, int]) -> None:
    assert parse_listen(listen) == want


@pytest.mark.parametrize("listen", ["nine", "127.0.0.1:99999", "metrics.example.com:9464"])
def test_bad_listen_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_listen(listen)
    assert info.value.key == "metrics.listen"


def test_http_endpoint_on_loopback() -> None:
    ex = Exporter(MetricsSettings(listen="127.0.0.1:0"))
    ex.start()
    try:
        m = JobMetrics()
        ex.job_started(m)
        _reply(m)
        ex.refresh()
        r = httpx.get(f"http://127.0.0.1:{ex.port}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert value(samples(r.text), "batchd_requests_total", status="completed", cause="none") == 1
    finally:
        ex.stop()


def test_textfile_is_written_whole_and_readable_by_node_exporter(tmp_path: Path) -> None:
    path = tmp_path / "batchd.prom"
    ex = Exporter(MetricsSettings(textfile=path))
    assert ex.enabled
    ex.write_textfile()
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert value(samples(path.read_text()), "batchd_job_running") == 0
    assert [p.name for p in tmp_path.iterdir()] == ["batchd.prom"]


def test_a_bad_address_or_a_port_in_use_stops_the_daemon_with_exit_2(folders: Folders) -> None:
    proc = run_batchd(folders.env("http://127.0.0.1:9", BATCHD_METRICS__LISTEN="nope"), "run", "--once")
    assert proc.returncode == 2 and "metrics.listen" in proc.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        proc = run_batchd(folders.env("http://127.0.0.1:9", BATCHD_METRICS__LISTEN=listen), "run", "--once")
    assert proc.returncode == 2 and f"cannot listen on {listen}" in proc.stderr


# -- the Grafana dashboard --------------------------------------------------------------------


def _full_exposition() -> set[str]:
    ex = Exporter(MetricsSettings())
    m = JobMetrics()
    ex.job_started(m)
    _reply(m)
    m.trims["sliding"] += 1
    m.retries["timeout"] += 1
    ex.job_published("completed", {"done": 1})
    ex.set_live(Live(job_running=True, backend_up=True, vram_used_bytes=1, vram_total_bytes=2))
    ex.set_queue(
        Queue(progress=0.5, eta_seconds=10, by_priority={0: 2, 5: 1}, preemptions=3, notifications={"pending": 1})
    )
    ex.refresh()
    return {name for name, _ in samples(ex.exposition())}


def test_grafana_dashboard_is_valid_and_names_metrics_that_exist() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 30
    assert dash["title"] and dash["uid"]
    names = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    exposed = _full_exposition()
    used: set[str] = set()
    ids = set()
    for panel in dash["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        assert panel["type"] in {"stat", "gauge", "timeseries"} and panel["title"]
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"]
            found = set(re.findall(r"\bbatchd_[a-z0-9_]+", target["expr"]))
            assert found, target["expr"]
            used |= found
    missing = used - exposed
    assert not missing, missing
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("throughput", "eta", "failures by cause", "vram", "backend up", "priority", "preemptions", "notif"):
        assert topic in titles


def test_metrics_settings_from_file_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from batchd.config import load_settings

    cfg = tmp_path / "batchd.toml"
    cfg.write_text("[metrics]\ninterval_seconds = 2\n\n[status_page]\nenabled = false\nrecent = 5\n")
    monkeypatch.setenv("BATCHD_METRICS__LISTEN", "9464")
    monkeypatch.setenv("BATCHD_METRICS__TEXTFILE", "/var/lib/node_exporter/batchd.prom")
    s = load_settings(cfg)
    assert s.metrics.listen == "9464" and str(s.metrics.textfile) == "/var/lib/node_exporter/batchd.prom"
    assert s.metrics.interval_seconds == 2 and not s.status_page.enabled and s.status_page.recent == 5
    monkeypatch.delenv("BATCHD_METRICS__LISTEN")
    monkeypatch.delenv("BATCHD_METRICS__TEXTFILE")
    default = load_settings(cfg)
    assert default.metrics.listen is None and default.metrics.textfile is None  # off unless configured
    assert not Exporter(default.metrics).enabled


def test_unknown_causes_add_up_under_other() -> None:
    """Two codes no exception declares both read ``other``: their counts add, neither hides the other."""
    ex = Exporter(MetricsSettings())
    m = JobMetrics()
    ex.job_started(m)
    m.count_outcome(False, "made_up_a")
    m.count_outcome(False, "made_up_b")
    m.count_outcome(False, "made_up_b")
    m.retries["odd_a"] += 1
    m.retries["odd_b"] += 2
    ex.refresh()
    snap = samples(ex.exposition())
    assert value(snap, "batchd_requests_total", status="failed", cause="other") == 3
    assert value(snap, "batchd_request_retries_total", cause="other") == 3


def test_a_counter_from_jobmetrics_is_one_row_of_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """``COUNTS`` is the one table: a new row is read per job, added across jobs and exposed, nothing else."""
    import batchd.status.prom as prom

    row = prom.Count("batchd_test_pressure", "VRAM pressure events (test row).", lambda m: m.vram_pressure_events)
    monkeypatch.setattr(prom, "COUNTS", (*prom.COUNTS, row))
    ex = Exporter(MetricsSettings())
    for n in (2, 3):
        m = JobMetrics()
        ex.job_started(m)
        m.vram_pressure_events += n
        ex.job_ended()
    snap = samples(ex.exposition())
    assert value(snap, "batchd_test_pressure_total") == 5
    assert {c.family for c in prom.COUNTS} <= {f.name for f in text_string_to_metric_families(ex.exposition().decode())}


def test_queue_by_priority_preemptions_and_notifications() -> None:
    ex = Exporter(MetricsSettings())
    ex.set_queue(Queue(by_priority={0: 2, 5: 1}, preemptions=3, notifications={"pending": 1, "delivered": 4}))
    ex.refresh()
    snap = samples(ex.exposition())
    assert value(snap, "batchd_queue_jobs_by_priority", priority="5") == 1
    assert value(snap, "batchd_queue_jobs_by_priority", priority="0") == 2
    assert value(snap, "batchd_preemptions_total") == 3
    assert value(snap, "batchd_notifications", state="pending") == 1
    assert value(snap, "batchd_notifications", state="delivered") == 4
    assert value(snap, "batchd_notifications", state="failed") == 0
