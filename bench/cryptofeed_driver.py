"""The baseline: cryptofeed's Bybit order book handler, driven offline on the benchmark's stream.

No network at all. cryptofeed's ``Feed.__init__`` normally downloads Bybit's instrument list; we fill its
symbol table (``cryptofeed.symbols.Symbols``) first with the symbols of the stream, so it never asks. Then
every line goes through ``Bybit.message_handler(msg: str, conn, receipt_ts)`` exactly as its websocket
loop calls it: ``yapic.json.loads(..., parse_float=Decimal)`` -> ``_book`` (``Decimal`` prices and sizes
into the C ``order_book`` package's sorted dicts) -> ``Feed.book_callback`` -> our callback.

The callback computes the same features as the recorder's rows (``recorder/features.py``): the top 10
levels per side, mid, spread, spread_bps, microprice, top-10 volumes, weighted prices, imbalance, the
data-quality score and the ISO timestamp, and builds the row tuple (then drops it: the baseline stores
nothing, the recorder commits every row to SQLite). By default the features are computed on cryptofeed's own
``Decimal`` values: measured here that is cryptofeed's best case, because ``float(Decimal)`` of the 40 top
values costs more than the Decimal arithmetic; ``--float`` converts the top levels to floats first (the
recorder's number type).

cryptofeed does not check Bybit's ``u`` continuity and does not detect crossed books; the recorder does
both on every frame.

Timing covers the handler loop only (lines already in memory as ``str``, as the websocket library hands
them over): no process start-up, no file reading, no storage.

    python bench/cryptofeed_driver.py STREAM.jsonl [--float] [--collect N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from l2rec.book.rows import IsoMillis

SKIP_PREFIX = "cryptofeed unavailable: "


def _import_cryptofeed() -> tuple[Any, ...]:
    """(Bybit, Symbol, Symbols, PERPETUAL, L2_BOOK, BYBIT) or raises ImportError with the reason."""
    from cryptofeed.defines import BYBIT, L2_BOOK, PERPETUAL
    from cryptofeed.exchanges import Bybit
    from cryptofeed.symbols import Symbol, Symbols

    return Bybit, Symbol, Symbols, PERPETUAL, L2_BOOK, BYBIT


def _hwm_bytes() -> int:
    """Peak RSS of this process image (VmHWM). Not ru_maxrss: on Linux that survives exec, so it would
    report the peak of the parent that forked us (the benchmark itself)."""
    with open("/proc/self/status", "rb") as fh:
        for line in fh:
            if line.startswith(b"VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def _version() -> str:
    try:
        return importlib.metadata.version("cryptofeed")
    except importlib.metadata.PackageNotFoundError:
        return "?"


class _Conn:
    """What ``Bybit.message_handler`` reads from its connection: the address (for the market) and a uuid."""

    address = "wss://stream.bybit.com/v5/public/linear"
    uuid = "bench"


def _symbols_of(lines: list[str]) -> list[str]:
    out: dict[str, None] = {}
    for line in lines:
        i = line.find('"topic":"orderbook.')
        if i >= 0:
            topic = line[i + 9:line.index('"', i + 9)]
            out[topic.rsplit(".", 1)[1]] = None
    return list(out)


def make_callback(n: int, *, decimal: bool, collect: int, sink: list[tuple[object, ...]],
                  counter: list[int]) -> Any:
    """The book callback: features of the book after every message, one row tuple per message."""
    iso = IsoMillis()  # the recorder's own cached formatter, so the timestamp costs the same
    rng = range(10)

    async def book_cb(book: Any, receipt_ts: float) -> None:
        bids_sd = book.book.bids
        asks_sd = book.book.asks
        nb_all = len(bids_sd)
        na_all = len(asks_sd)
        if decimal:
            bids = [bids_sd.index(i) for i in rng if i < nb_all]
            asks = [asks_sd.index(i) for i in rng if i < na_all]
        else:
            bids = [(float(p), float(s)) for p, s in (bids_sd.index(i) for i in rng if i < nb_all)]
            asks = [(float(p), float(s)) for p, s in (asks_sd.index(i) for i in rng if i < na_all)]
        bid_cols = [x for lvl in bids for x in lvl] + [None] * (20 - 2 * len(bids))
        ask_cols = [x for lvl in asks for x in lvl] + [None] * (20 - 2 * len(asks))
        nb = bids[:n]
        na = asks[:n]
        tbv = sum(s for _, s in nb) if nb else None
        tav = sum(s for _, s in na) if na else None
        wbp = sum(p * s for p, s in nb) / tbv if tbv else None
        wap = sum(p * s for p, s in na) / tav if tav else None
        mid = spread = spread_bps = micro = imb = None
        if bids and asks:
            b1, bs1 = bids[0]
            a1, as1 = asks[0]
            mid = (b1 + a1) / 2
            spread = a1 - b1
            spread_bps = spread / mid * 10_000
            micro = (b1 * as1 + a1 * bs1) / (bs1 + as1)
            imb = (tbv - tav) / (tbv + tav)  # type: ignore[operator]
        quality = min(1.0, nb_all / n, na_all / n)
        raw = book.raw
        data = raw["data"]
        ts = book.timestamp
        row = (iso(ts), data["s"], "bybit", *bid_cols, *ask_cols, mid, spread, spread_bps, tbv, tav, wbp, wap,
               imb, micro, data["u"], data.get("seq"), quality, "replay", data["u"], ts, data.get("seq"),
               raw.get("cts"), int(receipt_ts * 1e9), 50, "linear")
        counter[0] += 1
        if len(sink) < collect:
            sink.append(row)

    return book_cb


def drive(path: str | Path, *, decimal: bool = True, collect: int = 0) -> dict[str, object]:
    """Run every line of ``path`` through cryptofeed's Bybit handler; returns the measurements."""
    try:
        bybit_cls, symbol_cls, symbols_tbl, perpetual, l2_book, bybit_id = _import_cryptofeed()
    except Exception as exc:  # ImportError, or a broken install raising anything at import
        return {"skipped": f"{SKIP_PREFIX}{exc!r} (install it with: pip install -e '.[bench]')"}
    lines = [ln.decode() for ln in Path(path).read_bytes().splitlines() if ln.strip()]
    syms: dict[str, str] = {}
    info: dict[str, dict[str, object]] = {"tick_size": {}, "instrument_type": {}}
    for s in _symbols_of(lines):
        if not s.endswith("USDT"):
            return {"skipped": f"{SKIP_PREFIX}symbol {s} is not a USDT perpetual, cannot map it offline"}
        norm = symbol_cls(s[:-4], "USDT", type=perpetual).normalized
        syms[norm] = s
        info["instrument_type"][norm] = perpetual
    symbols_tbl.set(bybit_id, syms, info)  # so Feed.__init__ never fetches the instrument list
    sink: list[tuple[object, ...]] = []
    counter = [0]
    feed = bybit_cls(symbols=list(syms), channels=[l2_book],
                     callbacks={l2_book: make_callback(10, decimal=decimal, collect=collect, sink=sink,
                                                       counter=counter)})
    handler = feed.message_handler
    conn = _Conn()
    now = time.time

    async def loop() -> None:
        for line in lines:
            await handler(line, conn, now())

    rss_before = _rss_bytes()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    asyncio.run(loop())
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return {
        "frames": len(lines), "callbacks": counter[0], "wall_s": wall, "cpu_s": cpu,
        "frames_per_s": len(lines) / wall if wall > 0 else None,
        "peak_rss_bytes": _hwm_bytes(), "rss_before_loop_bytes": rss_before,
        "rss_after_loop_bytes": _rss_bytes(), "cryptofeed_version": _version(),
        "features": "decimal" if decimal else "float", "rows": sink,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Drive cryptofeed's Bybit book handler offline on a JSONL stream.")
    ap.add_argument("stream", type=Path)
    ap.add_argument("--float", dest="decimal", action="store_false",
                    help="convert the top levels to float before the features (default: Decimal, faster here)")
    ap.add_argument("--collect", type=int, default=0, help="return the first N row tuples too")
    ap.add_argument("--json", action="store_true", help="print one JSON object (for bench/run.py)")
    args = ap.parse_args(argv)
    res = drive(args.stream, decimal=args.decimal, collect=args.collect)
    if args.json:
        print(json.dumps(res, default=str))
    elif "skipped" in res:
        print(res["skipped"])
    else:
        print(f"cryptofeed {res['cryptofeed_version']} ({res['features']} features): {res['frames']} frames in "
              f"{res['wall_s']:.3f} s = {res['frames_per_s']:,.0f} frames/s, {res['cpu_s']:.3f} CPU s, "
              f"peak RSS {int(res['peak_rss_bytes']) / 2**20:.1f} MiB")  # type: ignore[call-overload]
    return 0


if __name__ == "__main__":
    sys.exit(main())
