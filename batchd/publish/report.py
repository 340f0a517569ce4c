"""Writes ``report.html``: the one page a person opens after a job.

Self-contained on purpose (no network, no script, no external CSS or fonts;
a Content-Security-Policy forbids anything else): it is read from a shared
folder, mailed around and opened offline. Plots are inline SVG (``svgchart.py``).
Every name, id and model output is untrusted text and goes through
``html.escape``. Rows stream from the journal: only the histogram, the top and
bottom rows and counters are kept, so 170,000 rows cost the same memory as 200.
"""

from __future__ import annotations

import datetime as dt
import heapq
import math
from collections import Counter
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import orjson

from batchd.journal import Job, Journal, Sample
from batchd.pace import duration
from batchd.publish import svgchart
from batchd.publish.scores import Scored, ScoreSheet
from batchd.publish.svgchart import number

TOP_N = 20
CELL_CHARS = 160


class ReportData:
    """Aggregates scored rows one at a time: counters, a histogram and two small heaps."""

    def __init__(self, sheet: ScoreSheet) -> None:
        self.sheet = sheet
        self.statuses: Counter[str] = Counter()
        self.hist: Counter[float] = Counter()
        self.failures: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self._top: list[tuple[float, int, dict[str, str]]] = []
        self._bottom: list[tuple[float, int, dict[str, str]]] = []

    def add(self, s: Scored) -> None:
        self.statuses[s.status] += 1
        if s.status in ("failed", "invalid", "skipped"):
            cause = s.error_code or s.status
            self.failures[cause] += 1
            if cause not in self.examples and s.error_message:
                self.examples[cause] = s.error_message[:300]
        if s.score is None or not math.isfinite(s.score):
            return
        self.hist[round(float(s.score), 3)] += 1
        view: dict[str, str] | None = None
        # Ties keep the earlier row: the heap drops the smallest key, and -seq is smaller for later rows.
        for heap, key in ((self._top, float(s.score)), (self._bottom, -float(s.score))):
            if len(heap) >= TOP_N and (key, -s.seq) <= heap[0][:2]:
                continue
            view = view or self._view(s)  # built only for the few rows that make a table
            item = (key, -s.seq, view)
            if len(heap) < TOP_N:
                heapq.heappush(heap, item)
            else:
                heapq.heapreplace(heap, item)

    def _view(self, s: Scored) -> dict[str, str]:
        view = {"custom_id": _short(s.custom_id), "score": _short(s.score)}
        view.update({c: _short(s.row.get(c)) for c in self.sheet.passthrough})
        view.update({c: _short(s.values.get(c)) for c in self.sheet.fields})
        return view

    @property
    def scored(self) -> int:
        return sum(self.hist.values())

    def top(self) -> list[dict[str, str]]:
        return [v for _, _, v in sorted(self._top, key=lambda i: i[:2], reverse=True)]

    def bottom(self) -> list[dict[str, str]]:
        return [v for _, _, v in sorted(self._bottom, key=lambda i: i[:2], reverse=True)]

    def everything(self) -> list[dict[str, str]]:
        """Best first; complete only while ``scored <= 2 * TOP_N``."""
        rows = {-neg_seq: (key, neg_seq, v) for key, neg_seq, v in self._top}
        rows.update({-neg_seq: (-key, neg_seq, v) for key, neg_seq, v in self._bottom})
        return [v for _, _, v in sorted(rows.values(), key=lambda i: i[:2], reverse=True)]


def write_report(
    folder: Path,
    job: Job,
    journal: Journal,
    *,
    sheet: ScoreSheet | None = None,
    data: ReportData | None = None,
    metrics: dict[str, Any] | None = None,
    opener: Any = None,
) -> Path:
    """Write ``folder/report.html``; pass ``data`` when the caller already streamed the rows."""
    if data is None:
        data = ReportData(sheet or ScoreSheet(fields=[]))
        for req in journal.iter_requests(job.id):
            data.add(data.sheet.score(req))
    page = render(job, data, journal.samples(job.id), metrics or {}).encode("utf-8")
    path = folder / "report.html"
    if opener is None:
        path.write_bytes(page)
    else:
        with opener(path) as fh:
            fh.write(page)
    return path


# -- the page ---------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;color:#1f2933;
 background:#f5f7fa;margin:0}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 10px}
.sub{color:#52606d;margin:0 0 16px}
section{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:16px 18px;margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(140px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e4e7eb;border-radius:8px;padding:10px 12px}
.card b{display:block;font-size:20px}.card span{color:#52606d;font-size:12px}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.completed{background:#2f855a}.failed{background:#c53030}.cancelled{background:#b7791f}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e4e7eb;vertical-align:top}
th{background:#f5f7fa;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#c53030;height:10px;border-radius:2px}
.note{color:#52606d;font-style:italic}
svg{display:block;max-width:100%;height:auto}svg text{font:12px system-ui,sans-serif;fill:#52606d}
footer{color:#7b8794;font-size:12px;text-align:center;padding:8px}
"""


def render(job: Job, data: ReportData, samples: Sequence[Sample], metrics: dict[str, Any]) -> str:
    final = str(metrics.get("status") or (job.final.value if job.final else job.state.value))
    facts = [
        ("model", job.model),
        ("pipeline", job.pipeline or ("default" if job.kind == "csv" else None)),
        ("mode", job.mode),
        ("fingerprint", ((metrics.get("server") or {}).get("fingerprint") or {}).get("id")),
        ("job", job.id),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
    ]
    sub = " · ".join(f"{k} <b>{escape(str(v))}</b>" for k, v in facts if v)
    parts = [
        f"<h1>{escape(job.input_name)} <span class='badge {escape(final)}'>{escape(final)}</span></h1>",
        f"<p class='sub'>{sub}</p>",
        _cards(data, metrics),
        _section("Score distribution", _histogram(data)),
        *_rank_sections(data),
        _section("Failures by cause", _failures(data)),
        _section("Throughput over time", _throughput(samples, job)),
        _section("Lanes over time", _lanes(samples, job, metrics)),
        _section("Context size over time", _context(samples, job, metrics)),
        _section("VRAM over time", _vram(samples, job, metrics)),
    ]
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>batchd report: {escape(job.input_name)}</title><style>{CSS}</style></head><body><main>"
        + "".join(parts)
        + f"<footer>batchd · generated {now} · full data in scores.csv, results.jsonl, "
        "errors.jsonl and metrics.json beside this file</footer></main></body></html>\n"
    )


def _section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


def _cards(data: ReportData, metrics: dict[str, Any]) -> str:
    st = data.statuses
    perf = metrics.get("performance") or {}
    tokens = metrics.get("tokens") or {}
    n = data.scored
    # Each term divided first: a sum of scores near 1e308 overflows to inf.
    mean = round(math.fsum(v * (c / n) for v, c in data.hist.items()), 2) if n else None
    median, seen = None, 0
    for v, c in sorted(data.hist.items()):
        seen += c
        if median is None and seen * 2 >= n:
            median = v
    cards = [
        ("rows", sum(st.values())),
        ("scored", n),
        ("ok", st["ok"]),
        ("failed", st["failed"]),
        ("invalid input", st["invalid"]),
        ("unparsed", st["unparsed"]),
        ("skipped", st["skipped"]),
        ("mean score", mean),
        ("median score", median),
        ("elapsed", _elapsed(perf.get("elapsed_seconds"))),
        ("rows / min", round(perf["requests_per_second"] * 60, 1) if perf.get("requests_per_second") else None),
        ("tokens", f"{tokens['total']:,}" if tokens.get("total") else None),
    ]
    return (
        "<div class='cards' style='margin-bottom:16px'>"
        + "".join(
            f"<div class='card'><b>{escape(number(v))}</b><span>{escape(k)}</span></div>"
            for k, v in cards
            if v not in (None, 0) or k in ("rows", "failed")
        )
        + "</div>"
    )


def _histogram(data: ReportData) -> str:
    if not data.hist:
        return "<p class='note'>No scores: nothing finished with a score.</p>"
    lo, hi = min(data.hist), max(data.hist)
    if data.sheet.scale:  # the whole scale, so 20 rows at 7 read as "all 7 out of 1-10"
        lo, hi = min(lo, data.sheet.scale[0]), max(hi, data.sheet.scale[1])
    if all(v.is_integer() for v in (lo, hi, *data.hist)) and hi - lo <= 30:
        bins = [(number(int(v)), data.hist.get(float(v), 0)) for v in range(int(lo), int(hi) + 1)]
    else:
        n = 10
        # Divided before subtracting: scores near ±1.8e308 (any reply is possible) must not overflow to inf.
        width = (hi / n - lo / n) or 1.0
        counts = [0] * n
        for v, c in data.hist.items():
            counts[min(n - 1, max(0, int((v / n - lo / n) / width * n)))] += c

        def edge(i: int) -> float:
            return lo * (1 - i / n) + hi * (i / n)

        bins = [(f"{number(edge(i))}–{number(edge(i + 1))}", c) for i, c in enumerate(counts)]
    return svgchart.bars(bins, ylabel="rows", xlabel="score", label="score histogram")


def _rank_sections(data: ReportData) -> list[str]:
    cols = ["custom_id", "score", *data.sheet.passthrough, *data.sheet.fields]
    if data.scored <= 2 * TOP_N:  # the two heaps hold every scored row: one table, no repeats
        return [_section("All scored rows, best first", _table(cols, data.everything()))] if data.scored else []
    return [
        _section(f"Top {TOP_N} by score", _table(cols, data.top())),
        _section(f"Bottom {TOP_N} by score, lowest first", _table(cols, data.bottom())),
    ]


def _table(cols: list[str], rows: list[dict[str, str]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td{' class=n' if c == 'score' else ''}>{escape(r.get(c, ''))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _failures(data: ReportData) -> str:
    causes = Counter(data.failures)
    examples = dict(data.examples)
    if data.statuses["unparsed"]:  # answered, but no score in the reply: as much a loss to the reader
        causes["unparsed"] = data.statuses["unparsed"]
        examples["unparsed"] = "the reply had no recognisable score (see results.jsonl)"
    if not causes:
        return "<p class='note'>No failed, invalid, skipped or unparsed rows.</p>"
    top = max(causes.values())
    rows = "".join(
        f"<tr><td>{escape(cause)}</td><td class=n>{n:,}</td><td style='width:30%'><div class='bar' "
        f"style='width:{100 * n / top:.1f}%'></div></td><td>{escape(examples.get(cause, ''))}</td></tr>"
        for cause, n in causes.most_common()
    )
    return (
        "<table><thead><tr><th>cause</th><th>rows</th><th></th><th>example</th></tr></thead>"
        f"<tbody>{rows}</tbody></table><p class='note'>Details per row in errors.jsonl.</p>"
    )


# -- time series from the journal's samples ----------------------------------------------


def _origin(samples: Sequence[Sample], job: Job) -> float:
    first = samples[0].t
    return min(first, job.started_at) if job.started_at and first - job.started_at < 600 else first


def _throughput(samples: Sequence[Sample], job: Job) -> str:
    if len(samples) < 2:
        return _too_few(samples)
    t0 = _origin(samples, job)
    span = samples[-1].t - samples[0].t
    finished = (samples[-1].done + samples[-1].failed) - (samples[0].done + samples[0].failed)
    # Average over windows that hold several rows each (a slow model finishes one row every
    # few samples) and that give at most ~100 steps (an overnight job has 18,000 samples).
    window = max(span / 100, 5 * span / max(1, finished))
    kept = [samples[0]]
    for s in samples[1:]:
        if s.t - kept[-1].t >= window or s is samples[-1]:
            kept.append(s)
    pts = []
    for a, b in zip(kept, kept[1:]):
        dt_s = b.t - a.t
        if dt_s > 0:  # a step per interval: the rate is an average over it, not a value at an instant
            rate = max(0.0, ((b.done + b.failed) - (a.done + a.failed)) * 60 / dt_s)
            pts += [(a.t - t0, rate), (b.t - t0, rate)]
    return svgchart.line(pts, "rows / min", color="#2f855a") if pts else _too_few(samples)


def _lanes(samples: Sequence[Sample], job: Job, metrics: dict[str, Any]) -> str:
    """Requests allowed in flight, as steps: every change the lanes controller (or VRAM policy) made."""
    series = [(float(t), int(n)) for t, n, *_ in metrics.get("lanes_series") or []]
    if not series:  # an older metrics.json: the lanes column of the samples
        series = [(s.t, int(s.lanes)) for s in samples if s.lanes is not None]
    end = max([series[-1][0], *(s.t for s in samples[-1:])]) if series else 0.0
    if not series or end <= series[0][0]:
        return _too_few(series[:1], "" if series else "No lanes recorded for this job.")
    t0 = _origin(samples, job) if samples else series[0][0]
    pts: list[tuple[float, float]] = []
    for t, n in series:
        if pts:
            pts.append((t - t0, pts[-1][1]))
        pts.append((t - t0, float(n)))
    pts.append((end - t0, pts[-1][1]))
    pts = [(max(0.0, x), y) for x, y in pts]
    mode = (metrics.get("lanes") or {}).get("mode")
    changes = len(series) - 1
    note = (
        f"<p class='note'>{'Adaptive (lanes = auto)' if mode == 'auto' else 'Pinned'}: {changes:,} change(s); "
        f"each is a <code>lanes_changed</code> event in the journal with its reason.</p>"
    )
    return svgchart.line(pts, "requests in flight (limit)", color="#2b6cb0") + note


def _context(samples: Sequence[Sample], job: Job, metrics: dict[str, Any]) -> str:
    pts = [(s.t, float(s.ctx_tokens)) for s in samples if s.ctx_tokens is not None]
    if len(pts) < 2:
        return _too_few(pts)
    t0 = _origin(samples, job)
    trims = [b.t - t0 for a, b in zip(samples, samples[1:]) if (b.trims or 0) > (a.trims or 0)]
    num_ctx = (metrics.get("context") or {}).get("num_ctx") or job.meta.get("num_ctx")
    note = (
        f"<p class='note'>Red ticks: {len(trims):,} sample interval(s) with context trims.</p>"
        if trims
        else "<p class='note'>No context trims.</p>"
    )
    return (
        svgchart.line(
            [(t - t0, v) for t, v in pts],
            "tokens",
            color="#6b46c1",
            marks=trims,
            ref=(float(num_ctx), f"num_ctx {num_ctx:,}") if num_ctx else None,
        )
        + note
    )


def _vram(samples: Sequence[Sample], job: Job, metrics: dict[str, Any]) -> str:
    pts = [(s.t, float(s.vram_used)) for s in samples if s.vram_used is not None]
    if len(pts) < 2:
        return _too_few(pts, "No VRAM readings (no GPU monitor, or too few samples).")
    t0 = _origin(samples, job)
    peak = max(v for _, v in pts)
    total = (metrics.get("vram") or {}).get("total_bytes")
    ref = None
    if peak <= 1.0:  # fractions of the card
        unit, scale, ref = "VRAM used (%)", 100.0, (100.0, "card total")
    elif peak > 1e6:  # bytes
        unit, scale = "VRAM used (GiB)", 1 / 2**30
        ref = (total / 2**30, f"card total {total / 2**30:.1f} GiB") if total else None
    else:
        unit, scale = "VRAM used", 1.0
    return svgchart.line([(t - t0, v * scale) for t, v in pts], unit, color="#dd6b20", ref=ref)


def _too_few(points: Sequence[Any], text: str = "") -> str:
    what = text or (
        "No samples recorded for this job."
        if not points
        else "Only one sample was recorded: too short a job to draw a curve."
    )
    return f"<p class='note'>{escape(what)}</p>"


def _short(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = "; ".join("" if v is None else str(v) for v in value)
    elif isinstance(value, dict):
        text = orjson.dumps(value).decode()
    else:
        text = number(value) if isinstance(value, (int, float)) else "" if value is None else str(value)
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"


def _elapsed(seconds: Any) -> str | None:
    """The job's elapsed time for its card; None (no card) when the metrics do not say."""
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        return None
    return duration(seconds, tenths=True)


def _when(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if ts else None
