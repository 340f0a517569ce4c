"""A first look (``publish.preview``): ``outbox/NAME.preview/`` after the first ``[preview] rows``
answers, refreshed, written like the final folder, gone after the final publish; its ``scores.csv``
rows are a prefix-consistent subset of the final ones."""

from __future__ import annotations

import asyncio
import csv
import io
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from batchd.daemon import Daemon
from batchd.publish.preview import Previews
from tests.support.emulator import Emulator
from tests.support.factories import Folders, write_jsonl
from tests.support.waiting import until

ROWS = 2000


def _snapshot(folder: Path) -> dict[str, Any] | None:
    """The preview's files, read whole (None when it was being replaced under us: try again)."""
    try:
        return {
            "metrics": orjson.loads((folder / "metrics.json").read_bytes()),
            "scores": (folder / "scores.csv").read_text(),
            "results": (folder / "results.jsonl").read_bytes().count(b"\n"),
            "mode": stat.S_IMODE((folder / "results.jsonl").stat().st_mode),
            "report": (folder / "report.html").exists(),
        }
    except (OSError, ValueError):
        return None


def test_preview_appears_after_the_first_answers_and_goes_with_the_final_publish(
    make_settings: Callable[..., Any], emulator: Emulator, folders: Folders
) -> None:
    emulator.latency = 0.004
    settings = make_settings(
        preview={"rows": 100, "interval_minutes": 0.02},
        status_page={"interval_seconds": 0.5},
        context={"mode": "isolated"},
    )
    daemon = Daemon(settings=settings)
    write_jsonl(folders.root / "big.jsonl", ROWS)
    seen: list[dict[str, Any]] = []
    page: dict[str, Any] = {}

    async def scenario() -> None:
        task = asyncio.create_task(daemon.run())
        (folders.root / "big.jsonl").rename(folders.inbox / "big.jsonl")
        preview = folders.outbox / "big.preview"
        while not (folders.outbox / "big").exists():
            if preview.exists() and (snap := _snapshot(preview)) is not None:
                if not seen or snap["results"] != seen[-1]["results"]:
                    seen.append(snap)
                if page.get("preview") is None:
                    status = orjson.loads((folders.outbox / "!status.json").read_bytes())
                    page.update(next(iter(status["active"]), {}))
            await asyncio.sleep(0.05)
        await until(lambda: not preview.exists(), timeout=5)
        daemon.stop.set()
        assert await task == 0
        await daemon.aclose()

    asyncio.run(scenario())
    assert len(seen) >= 2, "the preview was refreshed"
    first = seen[0]
    assert first["metrics"]["status"] == "running" and first["report"]
    assert 100 <= first["results"] < ROWS
    final = folders.outbox / "big"
    assert first["mode"] == stat.S_IMODE((final / "results.jsonl").stat().st_mode)  # written like the final
    assert page["preview"] == "big.preview"  # the status page links it
    assert not list(folders.outbox.glob("*.preview")) and not list(folders.outbox.glob(".*.preview.*"))
    final_rows = list(csv.reader(io.StringIO((final / "scores.csv").read_text())))
    for snap in seen:
        rows = list(csv.reader(io.StringIO(snap["scores"])))
        assert rows[0] == final_rows[0]
        # every preview row is a final row, in the final order (a subsequence), and they are the first ones
        assert rows[1:] == final_rows[1 : len(rows)], "prefix-consistent"


def test_when_a_preview_is_due() -> None:
    from batchd.config import Settings

    wall = [0.0]
    settings = Settings(preview={"rows": 100, "interval_minutes": 15})
    p = Previews(lambda: settings, wall=lambda: wall[0])
    assert not p.due("j", 99, False)
    assert p.due("j", 100, False)
    p._last["j"] = (0.0, 100, False)
    wall[0] = 14 * 60
    assert not p.due("j", 500, False)
    wall[0] = 15 * 60
    assert p.due("j", 500, False) and not p.due("j", 100, False)  # nothing new: no rewrite
    assert p.due("j", 100, True)  # paused: once more, saying why
    once = Settings(preview={"rows": 100, "interval_minutes": 0})
    q = Previews(lambda: once, wall=lambda: wall[0])
    q._last["j"] = (0.0, 100, False)
    wall[0] = 10_000
    assert not q.due("j", 5000, False)
    off = Settings(preview={"rows": 0})
    assert not Previews(lambda: off).due("j", 5000, False)
