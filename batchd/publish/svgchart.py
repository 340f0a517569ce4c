"""Inline SVG charts for report.html: a line over time and a bar chart, no script, no fonts.

Fixed-size plots (``W`` x ``H`` with margins for tick labels), round tick values,
at most ``MAX_POINTS`` points per line (peaks kept), every label ``html.escape``d.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape
from typing import Any

W, H = 960, 240
L, R, T, B = 70, 20, 14, 44  # plot margins: room for tick labels and axis titles
MAX_POINTS = 400


def bars(bins: Sequence[tuple[str, int]], *, ylabel: str, xlabel: str, label: str) -> str:
    """A bar chart of ``(label, count)`` bins, each bar titled with its count."""
    top = max(c for _, c in bins)
    ys = ticks(0, top, whole=True)
    ymax = ys[-1]
    pw, ph = W - L - R, H - T - B
    step = pw / len(bins)
    out = _axes(ys, lambda y: T + ph - ph * y / ymax, ylabel, xlabel)
    for i, (name, c) in enumerate(bins):
        x = L + i * step
        h = ph * c / ymax
        out.append(
            f"<rect x='{x + step * 0.12:.1f}' y='{T + ph - h:.1f}' width='{step * 0.76:.1f}' "
            f"height='{h:.1f}' fill='#3b82f6'><title>{escape(name)}: {c:,}</title></rect>"
        )
        out.append(f"<text x='{x + step / 2:.1f}' y='{T + ph + 16}' text-anchor='middle'>{escape(name)}</text>")
        if c:
            out.append(f"<text x='{x + step / 2:.1f}' y='{T + ph - h - 4:.1f}' text-anchor='middle'>{c:,}</text>")
    return _svg(out, label)


def line(
    pts: list[tuple[float, float]],
    ylabel: str,
    *,
    color: str,
    marks: Sequence[float] = (),
    ref: tuple[float, str] | None = None,
) -> str:
    """``(seconds since start, value)`` as a line; ``marks``: red ticks at those times; ``ref``: a dashed level."""
    pts = _thin(pts)
    xmax = max(x for x, _ in pts) or 1.0
    unit, div = ("h", 3600.0) if xmax >= 7200 else ("min", 60.0) if xmax >= 120 else ("s", 1.0)
    ytop = max([y for _, y in pts] + ([ref[0]] if ref else []))
    ys = ticks(0, ytop or 1.0)
    xs = ticks(0, xmax / div)
    pw, ph = W - L - R, H - T - B

    def sx(x: float) -> float:
        return L + pw * x / (xs[-1] * div)

    def sy(y: float) -> float:
        return T + ph - ph * y / ys[-1]

    out = _axes(ys, sy, ylabel, f"time since start ({unit})")
    for x in xs:
        out.append(f"<text x='{sx(x * div):.1f}' y='{T + ph + 16}' text-anchor='middle'>{number(x)}</text>")
    for m in list(dict.fromkeys(round(sx(m)) for m in marks))[:MAX_POINTS]:
        out.append(f"<line x1='{m}' x2='{m}' y1='{T + ph}' y2='{T + ph - 10}' stroke='#e53e3e' stroke-width='2'/>")
    if ref:
        out.append(
            f"<line x1='{L}' x2='{L + pw}' y1='{sy(ref[0]):.1f}' y2='{sy(ref[0]):.1f}' stroke='#9aa5b1' "
            f"stroke-dasharray='5 4'/><text x='{L + pw - 4}' y='{sy(ref[0]) - 4:.1f}' "
            f"text-anchor='end'>{escape(ref[1])}</text>"
        )
    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    out.append(f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='2' stroke-linejoin='round'/>")
    return _svg(out, ylabel)


def _axes(ys: list[float], sy: Callable[[float], float], ylabel: str, xlabel: str) -> list[str]:
    out = []
    for y in ys:
        out.append(
            f"<line x1='{L}' x2='{W - R}' y1='{sy(y):.1f}' y2='{sy(y):.1f}' stroke='#e4e7eb'/>"
            f"<text x='{L - 6}' y='{sy(y) + 4:.1f}' text-anchor='end'>{number(y)}</text>"
        )
    out.append(
        f"<line x1='{L}' x2='{L}' y1='{T}' y2='{H - B}' stroke='#9aa5b1'/>"
        f"<line x1='{L}' x2='{W - R}' y1='{H - B}' y2='{H - B}' stroke='#9aa5b1'/>"
    )
    out.append(f"<text x='{L + (W - L - R) / 2:.0f}' y='{H - 6}' text-anchor='middle'>{escape(xlabel)}</text>")
    out.append(
        f"<text transform='translate(16 {T + (H - T - B) / 2:.0f}) rotate(-90)' "
        f"text-anchor='middle'>{escape(ylabel)}</text>"
    )
    return out


def _svg(parts: list[str], label: str) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {W} {H}' width='{W}' height='{H}' "
        f"role='img' aria-label='{escape(label)}'>" + "".join(parts) + "</svg>"
    )


def _thin(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """At most MAX_POINTS points; each bucket keeps its highest value so peaks survive."""
    if len(pts) <= MAX_POINTS:
        return pts
    k = math.ceil(len(pts) / MAX_POINTS)
    return [max(pts[i : i + k], key=lambda p: p[1]) for i in range(0, len(pts), k)]


def ticks(lo: float, hi: float, n: int = 5, *, whole: bool = False) -> list[float]:
    """Round tick values from lo to at least hi (1, 2, 5 × 10^k steps; ≥ 1 for counts)."""
    if hi <= lo:
        hi = lo + 1
    raw = max((hi - lo) / n, 1.0) if whole else (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    count = math.ceil((hi - lo) / step - 1e-9)
    return [lo + i * step for i in range(count + 1)]


def number(v: Any) -> str:
    """A number for a label or a card: thousands separated, at most two decimals, huge ones in g-format."""
    if isinstance(v, float):
        if not math.isfinite(v) or abs(v) >= 1e15:
            return f"{v:.3g}"
        if v.is_integer():
            return f"{int(v):,}"
        return f"{v:,.2f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)
