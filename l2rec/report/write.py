"""``l2rec report``: read a training table's aggregates, draw the charts, write ``summary.json`` and
``index.html`` into a directory.

The database is opened read-only (``l2rec.storage.export.open_readonly``: a ``mode=ro`` URI), so a
recorder writing it meanwhile is not disturbed. The page is written last, so that it never references a
chart that is not there yet.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from l2rec.report.queries import MAX_POINTS, Histogram, ReportData, read_report_data
from l2rec.report.summary import build_summary, iso_ms
from l2rec.runtime.config import ConfigError
from l2rec.storage.export import open_readonly

EXTRA = "pip install 'bybit-l2-recorder[report]'"


class MissingMatplotlib(Exception):
    """matplotlib cannot be imported: the ``report`` extra is not installed."""


class ReportWriteError(Exception):
    """A file of the report could not be written."""

    def __init__(self, path: Path, cause: OSError) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause


@dataclass(frozen=True, slots=True)
class ReportWritten:
    """What a report wrote: its files (names in ``out``), the rows and symbols it covers, how long it took."""

    out: Path
    files: tuple[str, ...]
    rows: int
    symbols: int
    missing_symbols: tuple[str, ...]
    seconds: float


def require_matplotlib() -> None:
    """Raise MissingMatplotlib unless matplotlib imports (checked before the database is read)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise MissingMatplotlib(f"l2rec report needs matplotlib ({exc}): {EXTRA}") from None


def chart_names(symbols: Sequence[str]) -> dict[str, str]:
    """A PNG file name per symbol, safe on any file system and distinct even when two symbols differ only
    in characters a file name cannot hold."""
    out: dict[str, str] = {}
    taken: set[str] = set()
    for sym in symbols:
        base = "symbol-" + (re.sub(r"[^A-Za-z0-9._-]", "_", sym) or "_")
        name, n = f"{base}.png", 1
        while name.lower() in taken:  # case-insensitive file systems too
            n += 1
            name = f"{base}-{n}.png"
        taken.add(name.lower())
        out[sym] = name
    return out


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)  # a reader never sees half a page
    except OSError as exc:
        raise ReportWriteError(path, exc) from None


def write_report(db: str, out: str | Path, table: str = "l2_training_data_practical",
                 symbols: Sequence[str] | None = None, since_ms: int | None = None, until_ms: int | None = None,
                 progress: Callable[[int, int, int], None] | None = None, max_points: int = MAX_POINTS,
                 clock: Callable[[], float] = time.monotonic) -> ReportWritten:
    """Write the report of ``table`` in ``db`` into ``out`` (made if missing). Raises ConfigError (a bad
    database, table, range or output directory), NoRows (nothing in range), MissingMatplotlib, or
    ReportWriteError (with the path)."""
    t0 = clock()
    require_matplotlib()
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ConfigError("until", iso_ms(until_ms), f"must be after since ({iso_ms(since_ms)})")
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("out", str(out_dir), "is not a directory")
    conn = open_readonly(db, table)
    try:
        data = read_report_data(conn, table, symbols, since_ms, until_ms, max_points, progress)
    finally:
        conn.close()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportWriteError(out_dir, exc) from None
    overview, per_symbol = _draw(out_dir, data)
    summary = build_summary(data, db=db, since_ms=since_ms, until_ms=until_ms, charts=overview,
                            symbol_charts=per_symbol)
    missing = tuple(s for s in (symbols or ()) if s not in data.symbols)
    summary["symbols_without_rows"] = list(missing)
    _write_text(out_dir / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    from l2rec.report.page import index_html

    _write_text(out_dir / "index.html", index_html(summary))
    files = (*overview.values(), *per_symbol.values(), "summary.json", "index.html")
    return ReportWritten(out_dir, tuple(files), sum(sd.rows for sd in data.symbols.values()), len(data.symbols),
                         missing, clock() - t0)


def _draw(out_dir: Path, data: ReportData) -> tuple[dict[str, str], dict[str, str]]:
    """Every chart; returns the overview's files (``coverage``, ``latency``) and each symbol's."""
    from l2rec.report import charts as draw  # matplotlib: imported only once the data is read

    def save(name: str, make: Callable[[Path], None]) -> str:
        path = out_dir / name
        try:
            make(path)
        except OSError as exc:
            raise ReportWriteError(path, exc) from None
        return name

    overview = {"coverage": save("coverage.png", lambda p: draw.coverage_chart(p, data))}
    overall = Histogram()
    for sd in data.symbols.values():
        for b, n in sd.latency.counts.items():
            overall.add(b, n)
    if overall.rows:
        note = "" if data.latency_sample_every == 1 else \
            f"every {data.latency_sample_every}th block of rows: a sample of the table"
        overview["latency"] = save("latency.png", lambda p: draw.latency_chart(p, overall, note))
    per_symbol: dict[str, str] = {}
    for sym, name in chart_names(sorted(data.symbols)).items():
        sd = data.symbols[sym]
        gaps = [g for g in data.gaps if g.symbol == sym]
        per_symbol[sym] = save(name, partial(draw.symbol_chart, sd=sd, gaps=gaps))
    return overview, per_symbol
