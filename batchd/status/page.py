"""The live status files in the outbox root: ``!status.html`` for people, ``!status.json`` for scripts.

The people who drop files often have nothing but the shared folder, so the
folder shows the queue: running and queued jobs with a progress bar, done and
failed counts, req/s, ETA and "waiting for the backend since …", then the
recently finished jobs with a link to their folder. The page is plain HTML
(no script, nothing fetched, a CSP like ``report.html``'s) that reloads itself.

This module only builds the two documents from ``views.status_views`` (so the
JSON agrees with ``batchd status --json``; the page is drawn from the JSON, so
the two never disagree); ``live.py`` decides when to write them,
``fsutil.write_atomic`` replaces them.
"""

from __future__ import annotations

import html
import re
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import orjson

from batchd.pace import duration, rate_text
from batchd.redact import escape_controls
from batchd.status.views import StatusViews, ViewState
from batchd.storage import Blocked

# Job folders are named by ``inbox.safe_stem`` (only ``[A-Za-z0-9._-]``, never a leading
# ``.``, ``_`` or ``-``) plus ``.2``, ``.3``…, so a name with ``!`` can never be one.
# ``!`` is also the first printable character in byte order, and file managers
# (Explorer, Finder, Nautilus) put it before digits and letters: the files head the listing.
STATUS_HTML = "!status.html"
STATUS_JSON = "!status.json"
NAMES = (STATUS_HTML, STATUS_JSON)
REFRESH_SECONDS = 5
SCHEMA_VERSION = 1


class DaemonState(str, Enum):
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass(frozen=True)
class Waiting:
    """The running job is paused: the backend does not answer (wall-clock ``since``)."""

    job_id: str
    backend: str
    since: float


def page_data(
    views: StatusViews,
    *,
    now: float,
    daemon: DaemonState,
    waiting: Waiting | None = None,
    storage: Sequence[Blocked] = (),
    previews: dict[str, str] | None = None,
) -> dict[str, Any]:
    """What ``!status.json`` holds: ``active`` and ``recent`` as ``batchd status --json``, each active job
    with its first look's folder (``preview``: ``NAME.preview``, or None)."""
    jobs = views.as_dict()
    for v in jobs["active"]:
        v["preview"] = (previews or {}).get(v["job_id"], v["preview"])
    return {
        "schema": SCHEMA_VERSION,
        "generated_at": _iso(now),
        "generated_at_unix": round(now, 3),
        "refresh_seconds": REFRESH_SECONDS,
        "daemon": daemon.value,
        "waiting_for_backend": None
        if waiting is None
        else {
            "job_id": waiting.job_id,
            "backend": waiting.backend,
            "since": _iso(waiting.since),
            "since_unix": round(waiting.since, 3),
        },
        "waiting_for_storage": [
            {
                "store": b.store.value,
                "path": b.path,
                "full": b.full,
                "reason": b.reason,
                "since": _iso(b.since),
                "since_unix": round(b.since, 3),
                "text": b.text(),
            }
            for b in storage
        ],
        "active": jobs["active"],
        "recent": jobs["recent"],
        "cancel_refused": [{**r, "at": _iso(r["t"]), "t": round(r["t"], 3)} for r in views.refused],
    }


def storage_waits(outbox: Path, *, now: float, stale_after: float = 60.0) -> list[str]:
    """What the running daemon's last ``!status.json`` says it waits for ("waiting for disk space on
    PATH since HH:MM"); ``batchd status`` shows it. Empty when the page is old, absent or unreadable."""
    try:
        data = orjson.loads((outbox / STATUS_JSON).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return []
    if not isinstance(data, dict) or data.get("daemon") != DaemonState.RUNNING.value:
        return []
    if now - float(data.get("generated_at_unix") or 0) > stale_after:
        return []
    return [str(w.get("text", "")) for w in data.get("waiting_for_storage") or () if isinstance(w, dict)]


def render_json(data: dict[str, Any]) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


# -- the page ----------------------------------------------------------------------------

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2430}
main{max-width:1100px;margin:0 auto;padding:18px 22px}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:22px 0 8px}
.meta{color:#5b6472;margin:0 0 10px}
.banner{padding:10px 14px;border-radius:6px;margin:10px 0;font-weight:600}
.wait{background:#fff4d6;border:1px solid #e8b931}.stopped{background:#fde2e1;border:1px solid #d9534f}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e7}
th,td{padding:7px 10px;border-bottom:1px solid #e9ecf0;text-align:left;vertical-align:middle}
th{background:#eef1f5;font-weight:600;font-size:13px}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.p{white-space:nowrap}
.id{color:#7a8390;font-size:12px;display:block}
.bar{width:160px;height:14px;background:#e3e7ed;border-radius:7px;overflow:hidden;display:inline-block;
vertical-align:middle}
.fill{height:100%;background:#2f7de1}
.pct{display:inline-block;width:56px;text-align:right;font-variant-numeric:tabular-nums}
.s-completed{color:#1e7d32;font-weight:600}.s-failed,.s-cancelled{color:#b3261e;font-weight:600}
.s-running{color:#1f5fb4;font-weight:600}.s-paused,.s-cancelling{color:#a86d00;font-weight:600}
.err{color:#b3261e;font-size:13px;display:block}
footer{color:#7a8390;font-size:13px;margin-top:20px}
"""

_STATE_TEXT = {
    ViewState.INGESTING: "reading the file",
    ViewState.QUEUED: "queued",
    ViewState.RUNNING: "running",
    ViewState.FINALIZING: "writing results",
    ViewState.CANCELLING: "cancelling",
}


def render_html(data: dict[str, Any], *, outbox: Path | None = None) -> str:
    """The status page; ``outbox`` (when given) lets finished jobs link their ``report.html``."""
    now = float(data["generated_at_unix"])
    active, recent = data["active"], data["recent"]
    running = [v for v in active if ViewState(v["state"]).running]
    title = f"batchd: {len(running)} running, {len(active) - len(running)} queued"
    parts = [
        "<h1>batchd status</h1>",
        (
            f"<p class='meta'>Updated {_clock(now)} · this page reloads every {REFRESH_SECONDS} s · "
            f"{len(active)} job(s) running or queued</p>"
        ),
    ]
    if data["daemon"] != DaemonState.RUNNING.value:
        parts.append(
            f"<p class='banner stopped'>batchd is not running (stopped {_clock(now)}): "
            "nothing moves until it starts again.</p>"
        )
    waiting = data.get("waiting_for_backend")
    if waiting:
        parts.append(
            f"<p class='banner wait'>Waiting for the backend ({_shown(waiting['backend'])}) since "
            f"{_clock(waiting['since_unix'])} ({duration(now - waiting['since_unix'])}): "
            "the job resumes by itself when it answers; nothing is lost.</p>"
        )
    for blocked in data.get("waiting_for_storage") or ():
        parts.append(
            f"<p class='banner wait'>{_shown(blocked['text'])} ({duration(now - blocked['since_unix'])}): "
            "work resumes by itself when the disk accepts writes; answers in hand are kept.</p>"
        )
    parts.append("<h2>Running and queued</h2>")
    parts.append(
        _active_table(active, waiting, now)
        if active
        else "<p>Nothing running or queued. Drop a .csv or .jsonl file into the inbox to start a job.</p>"
    )
    if data.get("cancel_refused"):
        parts.append("<h2>Refused .cancel files</h2>" + _refused_list(data["cancel_refused"]))
    parts.append("<h2>Recently finished</h2>")
    parts.append(_recent_table(recent, now, outbox) if recent else "<p>No finished jobs yet.</p>")
    json_href = html.escape(urllib.parse.quote(STATUS_JSON))
    parts.append(
        f"<footer>batchd · the same data as JSON: <a href='{json_href}'>{html.escape(STATUS_JSON)}</a>"
        " · each finished job's folder holds results.jsonl, errors.jsonl, scores.csv, metrics.json"
        " and report.html</footer>"
    )
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<meta http-equiv='refresh' content='{REFRESH_SECONDS}'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body><main>"
        + "".join(parts)
        + "</main></body></html>\n"
    )


def _active_table(views: list[dict[str, Any]], waiting: dict[str, Any] | None, now: float) -> str:
    rows = [
        (
            "<table><thead><tr><th>Input</th><th>State</th><th>Progress</th><th>Done / total</th>"
            "<th>Failed</th><th>Req/s</th><th>ETA</th></tr></thead><tbody>"
        )
    ]
    for v in views:
        state = v["state"]
        label, css = _STATE_TEXT.get(ViewState(state), state), state
        if v.get("attention"):
            label, css = "needs attention", "paused"
        if waiting and waiting["job_id"] == v["job_id"]:
            label, css = "paused: waiting for the backend", "paused"
        eta = "-"
        if v["eta_seconds"] is not None:
            eta = f"{duration(v['eta_seconds'])} (about {_clock(now + v['eta_seconds'], date=False)})"
        rows.append(
            f"<tr><td>{_shown(v['input'])}<span class='id'>{_shown(v['job_id'])}</span>"
            f"{_error(v)}{_waits(v)}{_preview(v)}</td>"
            f"<td class='s-{html.escape(css)}'>{html.escape(label)}</td><td class='p'>{_bar(v['progress'])}</td>"
            f"<td class='n'>{v['finished']:,} / {v['total']:,}</td><td class='n'>{v['failed']:,}</td>"
            f"<td class='n'>{rate_text(v['req_per_s'])}</td><td class='n'>{html.escape(eta)}</td></tr>"
        )
    return "".join(rows) + "</tbody></table>"


def _recent_table(views: list[dict[str, Any]], now: float, outbox: Path | None) -> str:
    rows = [
        (
            "<table><thead><tr><th>Input</th><th>Status</th><th>Done / total</th><th>Failed</th>"
            "<th>Finished</th><th>Results</th></tr></thead><tbody>"
        )
    ]
    for v in views:
        finished = v["finished_at"]
        when = f"{_clock(finished)} ({duration(now - finished)} ago)" if finished else "-"
        rows.append(
            f"<tr><td>{_shown(v['input'])}<span class='id'>{_shown(v['job_id'])}</span>{_error(v)}</td>"
            f"<td class='s-{html.escape(v['state'])}'>{html.escape(v['state'])}</td>"
            f"<td class='n'>{v['done']:,} / {v['total']:,}</td><td class='n'>{v['failed']:,}</td>"
            f"<td>{html.escape(when)}</td><td>{_links(v.get('outbox'), outbox)}</td></tr>"
        )
    return "".join(rows) + "</tbody></table>"


#: why a ``.cancel`` file was refused (``intake.cancels``), in words
_REFUSED = {
    "not_the_owner": "only the person who dropped the file (or root) may cancel its job",
    "no_unfinished_job": "no unfinished job was dropped under that name there",
    "not_a_file": "not a plain file (a symlink or a folder)",
    "hard_link": "a hard link, not a file of its own",
    "not_empty": "not empty (drop an empty file)",
}


def _refused_list(refused: list[dict[str, Any]]) -> str:
    items = [
        f"<li>{_shown(r['at'])}: {_shown(r['name'])} from {_shown(r['user'])}: "
        f"{_shown(_REFUSED.get(r['reason'], r['reason']))}</li>"
        for r in refused
    ]
    return "<ul>" + "".join(items) + "</ul>"


def _links(folder: str | None, outbox: Path | None) -> str:
    if not folder:
        return "-"
    href = urllib.parse.quote(folder) + "/"
    out = f"<a href='{html.escape(href)}'>{_shown(folder)}/</a>"
    if outbox is not None and (outbox / folder / "report.html").is_file():
        out += f" · <a href='{html.escape(href)}report.html'>report</a>"
    return out


def _bar(fraction: float) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (
        f"<span class='bar' role='progressbar' aria-valuemin='0' aria-valuemax='100' "
        f"aria-valuenow='{pct:.1f}'><span class='fill' style='display:block;width:{pct:.2f}%'></span></span>"
        f"<span class='pct'>{pct:.1f}%</span>"
    )


def _error(v: dict[str, Any]) -> str:
    err = v.get("error")
    if not err:
        return ""
    message = str(err.get("message") or err.get("code") or "")
    return f"<span class='err'>{_shown(message[:200])}</span>"


#: why a queued job waits (``schedule.Why``), in words
_WAITS = {
    "running": "runs now",
    "priority": "waits: a job of higher priority goes first",
    "aged": "waits: a job that has waited longer than max_wait_minutes goes first",
    "smaller": "waits: a job with less work left goes first",
    "claimed_earlier": "waits: a job dropped earlier goes first",
    "same_model": "waits: the running job uses another model; switching would reload it",
}


def _preview(v: dict[str, Any]) -> str:
    folder = v.get("preview")
    if not folder:
        return ""
    href = html.escape(urllib.parse.quote(folder) + "/")
    link = f"<a href='{href}'>{_shown(folder)}/</a> (<a href='{href}report.html'>report</a>)"
    return f"<span class='id'>first look: {link}</span>"


def _waits(v: dict[str, Any]) -> str:
    attention = v.get("attention")
    if attention:
        samples = "; ".join(str(s)[:120] for s in attention.get("samples", [])[:3])
        text = f"needs attention: {attention.get('message', '')} {samples}".strip()
        return f"<span class='err'>{_shown(text[:600])}</span>"
    why = _WAITS.get(v.get("waits") or "")
    if not why:
        return ""
    behind = f" ({v['behind']})" if v.get("behind") else ""
    return f"<span class='id'>{_shown(why + behind)}</span>"


# Beyond the control characters (``redact.escape_controls``, as ``batchd status`` shows them): the
# invisible and direction-changing ones that could make a file name read as another.
_INVISIBLE = re.compile("[\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def _shown(text: object) -> str:
    """Untrusted text (file names, error messages) made safe and visible in HTML."""
    visible = _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", escape_controls(str(text)))
    return html.escape(visible)


def _clock(ts: float, *, date: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z" if date else "%H:%M %Z", time.localtime(ts))


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
