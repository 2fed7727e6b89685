"""Update-callback latency of the embedding API (issue 13): receive to callback, at 1,500 updates/s.

The fake Bybit server runs in load mode in a process of its own (as ``bench/run.py``'s live part does):
``--symbols`` x ``orderbook.50`` every 20 ms (30 x 50 = 1,500 frames/s by default). This process embeds the
recorder with ``create_data_ingestor`` (the seed's keys plus ``ws_url``) and sets an update callback that
only notes ``time.time_ns() - update.recv_time_ns`` (the shard's reader thread stamps ``recv_time_ns`` when
it reads the frame; the callback runs on the host's callback thread: one clock, one machine). After a
warm-up, every update of the measuring window counts.

    python bench/callback_latency.py                      # 30 symbols (1,500 updates/s), 60 s
    python bench/callback_latency.py --symbols 60 --seconds 30
    python bench/callback_latency.py --no-callback        # the same load without a callback: CPU baseline

Prints p50/p90/p99/max (ms), updates/s delivered, callback drops, and CPU (% of one core) per process of
the tree (the host = root thread + callback thread, writer, shards) and of the fake server.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGET_P99_MS = 50.0


def fake_server(conn: Connection, symbols: list[str], interval_ms: float) -> None:
    """Child process: the fake server in load mode (its event loop gets a GIL of its own)."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.bybit_server import FakeBybit

    srv = FakeBybit(symbols=symbols, interval_ms=interval_ms, seed=13, load=True).start(timeout=120)
    conn.send(srv.url)
    conn.recv()  # "stop"
    sent = srv.sent_count()
    srv.stop()
    conn.send(sent)


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--symbols", type=int, default=30, help="symbols, each orderbook.50 every 20 ms (default 30)")
    ap.add_argument("--seconds", type=float, default=60.0, help="measuring window (default 60)")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (default 5)")
    ap.add_argument("--no-callback", action="store_true",
                    help="no update callback (the shards send no rows): the CPU baseline, no latency")
    args = ap.parse_args(argv)

    from l2rec import L2Update, create_data_ingestor

    symbols = [f"B{i:03d}USDT" for i in range(args.symbols)]
    work = Path(tempfile.mkdtemp(prefix="l2rec-cb-"))
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fake = ctx.Process(target=fake_server, args=(child, symbols, 20.0), name="fake-bybit")
    fake.start()
    url = parent.recv()
    load0 = os.getloadavg()[0]
    print(f"callback latency: {args.symbols} symbols x orderbook.50 every 20 ms = {args.symbols * 50:,} updates/s "
          f"offered; {os.cpu_count()} cores, load average {load0:.2f} at start; work dir {work}", flush=True)

    window = {"on": False}
    lat_ns: list[int] = []
    counted = [0]

    def on_update(u: L2Update) -> None:
        if window["on"] and u.recv_time_ns is not None:
            lat_ns.append(time.time_ns() - u.recv_time_ns)

    errors: list[Exception] = []
    ingestor = create_data_ingestor({
        "exchange": "bybit", "symbols": ",".join(symbols), "sandbox": False, "db_path": str(work / "bench.db"),
        "table_name": "l2_training_data_practical", "log_updates": False, "buffer_size": 50,
        "write_interval": 2.0, "orderbook_depth": 10, "data_retention_hours": 1, "max_reconnect_attempts": 3,
        "reconnect_delay": 2.0, "ws_url": url, "log_level": "WARNING",
    })
    if not args.no_callback:
        ingestor.set_update_callback(on_update)
    ingestor.set_error_callback(errors.append)
    try:
        t0 = time.monotonic()
        if not ingestor.start():
            print(f"start() failed: {errors}")
            return 1
        print(f"  start() True after {time.monotonic() - t0:.2f} s", flush=True)
        time.sleep(args.warmup)
        host = psutil.Process()
        procs: dict[str, psutil.Process] = {"host (root + callbacks)": host, "fake server": psutil.Process(fake.pid)}
        for name, p in ingestor.get_stats()["health"]["processes"].items():
            if name != "root":
                procs[name] = psutil.Process(int(p["pid"]))
        before: dict[str, float] = {k: cpu_s(p) for k, p in procs.items()}
        stats0 = ingestor.get_stats()
        t_start = time.monotonic()
        window["on"] = True
        time.sleep(args.seconds)
        window["on"] = False
        elapsed = time.monotonic() - t_start
        after = {k: cpu_s(p) for k, p in procs.items()}
        stats1 = ingestor.get_stats()
        counted[0] = len(lat_ns)
    finally:
        ingestor.stop()
        parent.send("stop")
        sent = parent.recv()
        fake.join(30)
        final = ingestor.get_stats()
        shutil.rmtree(work, ignore_errors=True)

    cpu: dict[str, Any] = {k: round(100 * (after[k] - before[k]) / elapsed, 1) for k in procs}
    if args.no_callback:
        print("  no callback: CPU, % of one core: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
        print(f"  after stop: frames sent {sent:,}, rows committed {final['successful_writes']:,}")
        return 0
    ms = sorted(x / 1e6 for x in lat_ns)
    if not ms:
        print("no update reached the callback")
        return 1
    dropped = stats1["callback_dropped"] - stats0["callback_dropped"]
    print(f"  window {elapsed:.1f} s: {counted[0]:,} updates to the callback ({counted[0] / elapsed:,.0f}/s), "
          f"{dropped} dropped for the callback")
    p99 = pct(ms, 0.99)
    print(f"  receive -> callback, ms: p50 {pct(ms, 0.5):.1f}  p90 {pct(ms, 0.9):.1f}  p99 {p99:.1f}  "
          f"max {ms[-1]:.1f}  mean {statistics.fmean(ms):.1f}   (target p99 <= {TARGET_P99_MS:g}: "
          f"{'MET' if p99 <= TARGET_P99_MS else 'NOT MET'})")
    print("  CPU, % of one core: " + ", ".join(f"{k} {v}" for k, v in cpu.items()))
    print(f"  after stop: frames sent {sent:,}, rows committed {final['successful_writes']:,}, "
          f"callback delivered {final['callback_delivered']:,}, dropped {final['callback_dropped']}, "
          f"errors {len(errors)}; load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
