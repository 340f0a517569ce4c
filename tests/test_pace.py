"""pace: rate, ETA and duration on fixed numbers."""

from __future__ import annotations

import pytest

from batchd.pace import duration, eta, rate, rate_text, window_rate


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (5, "5s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (65, "1m05s"),
        (3_599, "59m59s"),
        (3_600, "1h00m"),
        (7_380, "2h03m"),
        (86_399, "23h59m"),
        (90_000, "1d01h"),
        (10 * 86_400, "10d00h"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.04, "0.0s"),
        (4.56, "4.5s"),
        (59.99, "59.9s"),
        (60, "1m00s"),
        (125.7, "2m05s"),
        (0, "0s"),
    ],
)
def test_duration_tenths(seconds: float, text: str) -> None:
    assert duration(seconds, tenths=True) == text


def test_rate() -> None:
    assert rate(30, 10.0) == 3.0
    assert rate(0, 10.0) is None  # nothing counted yet: no rate, not 0 req/s
    assert rate(5, 0.0) is None


def test_window_rate() -> None:
    assert window_rate([(100.0, 10), (110.0, 30), (120.0, 70)]) == 3.0  # first to last point
    assert window_rate([(100.0, 10)]) is None
    assert window_rate([(100.0, 10), (100.0, 20)]) is None  # no time between them
    assert window_rate([(100.0, 20), (110.0, 10)]) == 0.0  # a total that fell reads as standing still


def test_eta() -> None:
    assert eta(60, 4.0) == 15.0
    assert eta(60, None) is None
    assert eta(-2, 4.0) == 0.0


def test_rate_text() -> None:
    assert rate_text(12.345) == "12.3"
    assert rate_text(None) == "-"
    assert rate_text(0.0) == "-"
