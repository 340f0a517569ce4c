"""Rate, ETA and duration: the arithmetic and the one way batchd writes a span of time.

The status line, ``batchd status``, the status page, the Prometheus gauges and
report.html all show a request rate, an ETA or an elapsed time; they compute
and print them here so that "ETA 1m05s" means the same thing everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def rate(count: float, seconds: float) -> float | None:
    """``count`` per second over ``seconds``; None before anything was counted or any time passed."""
    return count / seconds if count and seconds > 0 else None


def window_rate(points: Sequence[tuple[float, float]]) -> float | None:
    """Per-second growth of a running total from its first to its last ``(time, total)`` point.

    None with fewer than two points or none apart in time; never negative (a
    total that went down, e.g. a retried request, reads as standing still).
    """
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    (t0, n0), (t1, n1) = points[0], points[-1]
    return max(0.0, (n1 - n0) / (t1 - t0))


def eta(left: float, per_second: float | None) -> float | None:
    """Seconds until ``left`` more are done at ``per_second``; None without a rate."""
    return max(0.0, left) / per_second if per_second else None


def duration(seconds: float, *, tenths: bool = False) -> str:
    """A span as ``9s``, ``1m05s``, ``2h03m`` or ``1d04h`` (the two largest units; negative reads 0s).

    ``tenths`` keeps one decimal under a minute (``4.5s``), for a short job's elapsed time.
    """
    if tenths and 0 < seconds < 60:
        return f"{math.floor(seconds * 10) / 10:.1f}s"
    s = int(max(0.0, seconds))  # truncated: an ETA of 59.9 s reads 59s, never a minute too soon
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if d:
        return f"{d}d{h:02d}h"
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def rate_text(per_second: float | None) -> str:
    """A rate for a table cell: ``12.3``, or ``-`` without one."""
    return f"{per_second:.1f}" if per_second else "-"
