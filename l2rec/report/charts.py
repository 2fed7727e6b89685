"""The report's PNG charts (matplotlib, the non-interactive Agg backend: no display, no GUI toolkit).

Made from :class:`~l2rec.report.queries.ReportData` only: at most ``MAX_POINTS`` points a line, whatever
the table's size. Figures are built with matplotlib's object API (``Figure``), not pyplot: nothing is kept
in pyplot's global registry of open figures, so memory does not grow with the number of symbols.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before anything else of matplotlib: never look for a display

import numpy as np
from matplotlib.axes import Axes
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from l2rec.report.queries import (
    HOUR_MS,
    LATENCY_NEGATIVE_BIN,
    LATENCY_OVERFLOW_BIN,
    Gap,
    Histogram,
    ReportData,
    SymbolData,
    latency_bin_edges,
)

DPI = 100
GAP_COLOR = "tab:red"


def _dates(ms: Sequence[int] | np.ndarray) -> np.ndarray:
    """Epoch milliseconds as matplotlib's date numbers (days)."""
    return np.asarray(date2num(np.asarray(ms, dtype="int64").astype("datetime64[ms]")), dtype=float)


def _gap_spans(sd: SymbolData, gaps: Sequence[Gap]) -> list[tuple[int, int]]:
    """The gaps' intervals in ms, clipped to the range and merged where they touch or overlap; an open gap
    runs to the range's end. At most one span per bucket survives the merge, so drawing stays bounded."""
    spans: list[tuple[int, int]] = []
    for g in gaps:
        lo = max(g.detected_ns // 1_000_000, sd.start_ms)
        hi = min(sd.end_ms if g.recovered_ns is None else g.recovered_ns // 1_000_000, sd.end_ms)
        if hi >= lo and lo < sd.end_ms:
            spans.append((lo, hi))
    spans.sort()
    bucket_ms = sd.bucket_minutes * 60_000
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + bucket_ms // 2:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    # A gap of a few milliseconds would be invisible: draw it at least a fifth of a bucket wide.
    return [(lo, max(hi, lo + bucket_ms // 5)) for lo, hi in merged]


def _shade(ax: Axes, spans: Sequence[tuple[int, int]]) -> None:
    for lo, hi in spans:
        a, b = _dates([lo, hi])
        ax.axvspan(float(a), float(b), color=GAP_COLOR, alpha=0.18, lw=0)


def symbol_chart(path: Path, sd: SymbolData, gaps: Sequence[Gap]) -> None:
    """Three panels over the range, sharing the time axis: mid price (mean per bucket) with its min-max
    envelope and the spread (mean best bid to mean best ask) as a band; order-book imbalance (mean and
    min-max); rows per minute. The symbol's gaps are shaded on each."""
    n = sd.buckets_in_chart
    starts = np.array([sd.bucket_start_ms(i) for i in range(n)] + [sd.end_ms], dtype="int64")
    x = _dates(starts)
    nan = np.full(n, np.nan)
    mid, mid_lo, mid_hi, bid, ask = nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy()
    imb, imb_lo, imb_hi = nan.copy(), nan.copy(), nan.copy()
    rate = np.zeros(n)
    for i, b in sd.buckets.items():
        if not 0 <= i < n:
            continue
        rate[i] = b.rows / sd.bucket_minutes
        if b.mid_n:
            mid[i], mid_lo[i], mid_hi[i] = b.mid_sum / b.mid_n, b.mid_min, b.mid_max
        if b.bid_n and b.ask_n:
            bid[i], ask[i] = b.bid_sum / b.bid_n, b.ask_sum / b.ask_n
        if b.imb_n:
            imb[i], imb_lo[i], imb_hi[i] = b.imb_sum / b.imb_n, b.imb_min, b.imb_max
    # Steps: each bucket's value holds from its start to the next bucket's (the last one to the range's end).
    def steps(v: np.ndarray) -> np.ndarray:
        return np.append(v, v[-1])

    fig = Figure(figsize=(11, 7.5), dpi=DPI, layout="constrained")
    ax_mid, ax_imb, ax_rate = fig.subplots(3, 1, sharex=True, height_ratios=[3, 1.4, 1.4])
    ax_mid.fill_between(x, steps(mid_lo), steps(mid_hi), step="post", color="tab:blue", alpha=0.15, lw=0)
    ax_mid.fill_between(x, steps(bid), steps(ask), step="post", color="tab:orange", alpha=0.6, lw=0)
    # A few isolated points would be invisible as steps: mark each bucket then.
    marker = "." if len(sd.buckets) <= 60 else None
    ax_mid.step(x, steps(mid), where="post", color="tab:blue", lw=0.9)
    if marker:
        ax_mid.plot(x[:-1], mid, ls="", marker=marker, color="tab:blue")
    ax_mid.set_ylabel("mid price")
    ax_mid.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax_imb.fill_between(x, steps(imb_lo), steps(imb_hi), step="post", color="tab:green", alpha=0.15, lw=0)
    ax_imb.step(x, steps(imb), where="post", color="tab:green", lw=0.9)
    if marker:
        ax_imb.plot(x[:-1], imb, ls="", marker=marker, color="tab:green")
    ax_imb.axhline(0.0, color="0.5", lw=0.5)
    ax_imb.set_ylim(-1.05, 1.05)
    ax_imb.set_ylabel("imbalance")
    ax_rate.step(x, steps(rate), where="post", color="0.25", lw=0.9)
    if marker:
        ax_rate.plot(x[:-1][rate > 0], rate[rate > 0], ls="", marker=marker, color="0.25")
    ax_rate.set_ylim(bottom=0)
    ax_rate.set_ylabel("rows / minute")
    spans = _gap_spans(sd, gaps)
    for ax in (ax_mid, ax_imb, ax_rate):
        _shade(ax, spans)
        ax.grid(True, lw=0.3, alpha=0.5)
    locator = AutoDateLocator()
    ax_rate.xaxis.set_major_locator(locator)
    ax_rate.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax_rate.set_xlim(float(x[0]), float(x[-1]))
    ax_rate.set_xlabel("exchange time (UTC)" + (f", {sd.bucket_minutes}-minute buckets" if sd.bucket_minutes > 1
                                                 else ", 1-minute buckets"))
    handles = [Patch(color="tab:blue", alpha=0.15, label="mid min-max"),
               Patch(color="tab:orange", alpha=0.6, label="spread (best bid to ask)"),
               Patch(color=GAP_COLOR, alpha=0.18, label=f"gaps ({len(gaps)} in l2_gaps)")]
    ax_mid.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.8)
    fig.suptitle(f"{sd.symbol}: {sd.rows:,} rows", fontsize=12)
    fig.savefig(path, format="png")


def coverage_chart(path: Path, data: ReportData) -> None:
    """Symbols x UTC hours: the share of each hour's minutes (in range) holding at least one row."""
    names = sorted(data.symbols)
    hours = list(data.hours())
    grid = np.array([[data.coverage(s, h) if data.coverage(s, h) is not None else np.nan for h in hours]
                     for s in names], dtype=float)
    height = min(30.0, max(2.6, 1.6 + 0.3 * len(names)))
    width = min(30.0, max(8.0, 3.0 + 0.35 * len(hours)))
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid * 100.0, aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=100.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="% of minutes with rows", fraction=0.04, pad=0.01)
    step_y = max(1, math.ceil(len(names) / 60))
    ax.set_yticks(range(0, len(names), step_y), [names[i] for i in range(0, len(names), step_y)], fontsize=8)
    step_x = max(1, math.ceil(len(hours) / 24))
    labels = [_hour_label(hours[i], i == 0 or hours[i] % 24 == 0) for i in range(0, len(hours), step_x)]
    ax.set_xticks(range(0, len(hours), step_x), labels, fontsize=8, rotation=45, ha="right")
    if len(names) * len(hours) <= 240:  # small grids: the figures themselves, readable in each cell
        for r in range(len(names)):
            for c in range(len(hours)):
                v = grid[r, c]
                if not np.isnan(v):
                    ax.text(c, r, f"{v * 100:.0f}", ha="center", va="center", fontsize=7, color="black")
    ax.set_xlabel("hour (UTC)")
    fig.suptitle("coverage: share of minutes holding rows, per symbol and hour", fontsize=11)
    fig.savefig(path, format="png")


def _hour_label(hour: int, with_date: bool) -> str:
    import time

    t = time.gmtime(hour * HOUR_MS // 1000)
    return time.strftime("%m-%d %H:00" if with_date else "%H:00", t)


def latency_chart(path: Path, histogram: Histogram, note: str) -> None:
    """Receive latency (receive time minus exchange time) as rows per millisecond of latency, up to the
    99.9th percentile, with p50/p90/p99 marked; ``note`` says what was left out or sampled."""
    counts = {b: n for b, n in histogram.counts.items() if b not in (LATENCY_NEGATIVE_BIN, LATENCY_OVERFLOW_BIN)}
    fig = Figure(figsize=(11, 4.5), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    if counts:
        top = histogram.percentile(0.999)
        limit = max(10.0, top if top is not None and not math.isinf(top) else 10_000.0)
        bins = sorted(b for b in counts if latency_bin_edges(b)[0] < limit)
        edges = [latency_bin_edges(b) for b in bins]
        left = np.array([lo for lo, _ in edges])
        width = np.array([hi - lo for lo, hi in edges])
        ax.bar(left, np.array([counts[b] for b in bins]) / width, width=width, align="edge", color="tab:purple",
               alpha=0.8, lw=0)
        for q, style in ((0.5, "-"), (0.9, "--"), (0.99, ":")):
            v = histogram.percentile(q)
            if v is not None and not math.isinf(v):
                ax.axvline(v, color="black", lw=0.9, ls=style, label=f"p{round(q * 100)} <= {v:g} ms")
        ax.set_xlim(0, limit)
        ax.legend(fontsize=8)
    ax.set_xlabel("receive time - exchange time (ms)")
    ax.set_ylabel("rows per ms of latency")
    ax.grid(True, lw=0.3, alpha=0.5)
    fig.suptitle(f"receive latency: {histogram.rows:,} rows" + (f" ({note})" if note else ""), fontsize=11)
    fig.savefig(path, format="png")
