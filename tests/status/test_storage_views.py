"""What the status views say while a store refuses writes (issue [18]): the status page and its JSON,
what ``batchd status`` reads back from it, and the Prometheus gauges."""

from __future__ import annotations

import time
from pathlib import Path

from batchd.config import MetricsSettings
from batchd.errors import StorageError
from batchd.status.page import DaemonState, page_data, render_html, render_json, storage_waits
from batchd.status.prom import Exporter, Live
from batchd.status.views import StatusViews
from batchd.storage import DiskWatch, Store

JOURNAL = "/srv/batchd/journal.sqlite3"


def _blocked() -> DiskWatch:
    disk = DiskWatch()
    disk.blocked(Store.JOURNAL, StorageError("x", path=JOURNAL, full=True, reason="database or disk is full"))
    return disk


def test_the_page_and_batchd_status_say_what_it_waits_for(tmp_path: Path) -> None:
    disk = _blocked()
    now = time.time()
    data = page_data(StatusViews(), now=now, daemon=DaemonState.RUNNING, storage=disk.all())
    (shown,) = data["waiting_for_storage"]
    assert shown["store"] == "journal" and shown["path"] == JOURNAL and shown["full"] is True
    assert shown["text"] == f"waiting for disk space on {JOURNAL} since {time.strftime('%H:%M')}"
    assert shown["text"] in render_html(data, outbox=tmp_path)
    (tmp_path / "!status.json").write_bytes(render_json(data))
    assert storage_waits(tmp_path, now=now) == [shown["text"]]
    assert storage_waits(tmp_path, now=now + 3600) == []  # an old page is not the daemon's word now
    stopped = page_data(StatusViews(), now=now, daemon=DaemonState.STOPPED, storage=disk.all())
    (tmp_path / "!status.json").write_bytes(render_json(stopped))
    assert storage_waits(tmp_path, now=now) == []
    clear = page_data(StatusViews(), now=now, daemon=DaemonState.RUNNING)
    assert clear["waiting_for_storage"] == []


def test_the_gauge_names_the_blocked_store() -> None:
    ex = Exporter(MetricsSettings())
    ex.set_live(Live(storage_blocked=(("journal", 1700000000.0),)))
    text = ex.exposition().decode()
    assert 'batchd_storage_blocked{store="journal"} 1.0' in text
    assert 'batchd_storage_blocked{store="outbox"} 0.0' in text
    assert 'batchd_storage_blocked_since_seconds{store="journal"} 1.7e+09' in text
    ex.set_live(Live())
    text = ex.exposition().decode()
    assert 'batchd_storage_blocked{store="journal"} 0.0' in text and "blocked_since" not in text
