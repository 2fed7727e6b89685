"""``summary.json``: the report's figures per symbol, for a script to read (and the page's table).

Per symbol: rows, first and last ``exchange_timestamp`` (ISO-8601 UTC and milliseconds), gaps by reason,
coverage (the share of the range's minutes that hold a row) in percent, per hour too (the hours holding
rows), and the receive latency's
percentiles where receive times exist. Gaps are those of ``l2_gaps`` for the symbol (any of its topics)
that overlap the range asked for with ``--since``/``--until``; without either, all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from l2rec.report.queries import (
    HOUR_MS,
    LATENCY_NEGATIVE_BIN,
    LATENCY_OVERFLOW_BIN,
    Gap,
    Histogram,
    ReportData,
    gap_in_range,
)


def iso_ms(ms: int) -> str:
    """Epoch milliseconds as the table's own ISO-8601 form: ``2024-12-01T00:00:00.691Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z"


def latency_figures(h: Histogram) -> dict[str, Any] | None:
    """Rows, p50/p90/p99 (ms, a bin's upper edge; None for the overflow bin) and the odd ones of a histogram."""
    if not h.rows:
        return None

    def ms(q: float) -> float | None:
        v = h.percentile(q)
        return None if v is None or math.isinf(v) else v

    return {"rows": h.rows, "p50_ms": ms(0.5), "p90_ms": ms(0.9), "p99_ms": ms(0.99),
            "before_exchange_time": h.counts.get(LATENCY_NEGATIVE_BIN, 0),
            "over_10s": h.counts.get(LATENCY_OVERFLOW_BIN, 0)}


def gaps_by_reason(gaps: list[Gap]) -> dict[str, int]:
    """Count of gaps per reason, reasons in alphabetical order."""
    out: dict[str, int] = {}
    for g in gaps:
        out[g.reason] = out.get(g.reason, 0) + 1
    return dict(sorted(out.items()))


def build_summary(data: ReportData, *, db: str, since_ms: int | None, until_ms: int | None,
                  charts: Mapping[str, str], symbol_charts: Mapping[str, str],
                  generated_at: float | None = None) -> dict[str, Any]:
    """The contents of ``summary.json``. ``charts``: the overview's files (``coverage``, ``latency``);
    ``symbol_charts``: each symbol's."""
    span = data.span_minutes
    symbols: dict[str, Any] = {}
    all_latency = Histogram()
    for name in sorted(data.symbols):
        sd = data.symbols[name]
        gaps = [g for g in data.gaps if g.symbol == name and gap_in_range(g, since_ms, until_ms)]
        for b, n in sd.latency.counts.items():
            all_latency.add(b, n)
        symbols[name] = {
            "rows": sd.rows,
            "first_timestamp": None if sd.first_ms is None else iso_ms(sd.first_ms),
            "last_timestamp": None if sd.last_ms is None else iso_ms(sd.last_ms),
            "first_exchange_timestamp": sd.first_ms,
            "last_exchange_timestamp": sd.last_ms,
            "gaps": gaps_by_reason(gaps),
            "gaps_total": len(gaps),
            "minutes_with_rows": sd.minutes_with_rows,
            "coverage_percent": round(100.0 * sd.minutes_with_rows / span, 3) if span else 0.0,
            # Only the hours holding rows (any other hour of the range: 0), so a year stays a small file.
            "coverage_by_hour": {iso_ms(h * HOUR_MS): round(100.0 * (data.coverage(name, h) or 0.0), 2)
                                 for h in sorted(sd.minutes)},
            "latency": latency_figures(sd.latency),
            "chart": symbol_charts.get(name),
            "chart_bucket_minutes": sd.bucket_minutes,
        }
    return {
        "generated_at": iso_ms(int((time.time() if generated_at is None else generated_at) * 1000)),
        "database": db,
        "table": data.table,
        "since": None if since_ms is None else iso_ms(since_ms),
        "until": None if until_ms is None else iso_ms(until_ms),
        "range": {"start": iso_ms(data.start_ms), "end": iso_ms(data.end_ms), "minutes": span},
        "rows": sum(sd.rows for sd in data.symbols.values()),
        "symbols": symbols,
        "latency": latency_figures(all_latency),
        "latency_sample_every_blocks": data.latency_sample_every if data.has_receive_times else None,
        "charts": dict(charts),
    }
