"""svgchart: ticks, thinning, number labels and the two charts, on fixed numbers."""

from __future__ import annotations

import math

from batchd.publish import svgchart
from batchd.publish.svgchart import bars, line, number, ticks


def test_ticks_are_round_and_cover_the_range() -> None:
    assert ticks(0, 7) == [0, 2, 4, 6, 8]
    assert ticks(0, 3, whole=True) == [0, 1, 2, 3]  # counts: steps of at least 1
    assert ticks(0, 0)[0] == 0 and ticks(0, 0)[-1] == 1.0  # an empty range still draws


def test_number_labels() -> None:
    assert [number(v) for v in (3, 1234567, 2.0, 0.125, 1234.5, math.inf, 1e300, True)] == [
        "3",
        "1,234,567",
        "2",
        "0.12",
        "1,234",
        "inf",
        "1e+300",
        "True",
    ]


def test_a_long_line_is_thinned_and_keeps_its_peak() -> None:
    pts = [(float(i), 100.0 if i == 777 else 1.0) for i in range(5000)]
    svg = line(pts, "rows / min", color="#000")
    drawn = svg.split("points='")[1].split("'")[0].split()
    assert len(drawn) <= svgchart.MAX_POINTS
    assert min(float(p.split(",")[1]) for p in drawn) < svgchart.T + 1  # the 100 reaches the top


def test_bars_are_labelled_by_the_chart_not_by_its_last_bin() -> None:
    svg = bars([("1", 3), ("2", 0), ("<3", 5)], ylabel="rows", xlabel="score", label="score histogram")
    assert "aria-label='score histogram'" in svg
    assert "<title>&lt;3: 5</title>" in svg and svg.count("<rect") == 3
