"""``l2rec report`` on a 10-million-row database: wall time, CPU time and peak RSS against the targets
(under a minute; memory bounded, i.e. independent of the number of rows).

    python bench/report.py [--rows N] [--symbols N] [--hours H] [--cache DIR] [--out DIR]

The database is built once and cached (``/tmp/l2rec-bench/report-ROWS-SYMBOLS-HOURS.db``, or under
``$L2REC_BENCH_CACHE``): synthetic rows in the recorder's own schema (``l2rec.storage.schema``: the table,
its two indexes, ``l2_gaps``), every column the recorder fills filled with plausible values (10 levels a
side, features, receive times), written in exchange-time order with the symbols interleaved as a live
recording is, plus a few holes per symbol recorded as gaps. It is made with ``executemany``, not by the
recorder: replaying 10 million frames would take longer than the benchmark is worth.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from l2rec.storage import schema  # noqa: E402

T0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
TABLE = "l2_training_data_practical"
TARGET_S = 60.0
BUILD_VERSION = 2  # bump when the generated content changes: the cache key holds it


def _symbols(n: int) -> list[str]:
    names = ["BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "BCH", "TRX", "ATOM", "NEAR",
             "APT", "ARB", "OP", "SUI", "FIL", "ETC"]
    return [f"{names[i % len(names)]}{'' if i < len(names) else i}USDT" for i in range(n)]


def _holes(rnd: random.Random, symbols: int, span_ms: int) -> list[list[tuple[int, int, str]]]:
    """Per symbol, 1-3 stretches without rows (each a gap of a reason), 1-15 minutes long."""
    reasons = ("disconnect", "u_jump", "shard_restart", "downtime")
    out: list[list[tuple[int, int, str]]] = []
    for _ in range(symbols):
        holes = []
        for _ in range(rnd.randint(1, 3)):
            start = T0 + rnd.randrange(span_ms - 20 * 60_000)
            holes.append((start, start + rnd.randint(60_000, 15 * 60_000), rnd.choice(reasons)))
        out.append(sorted(holes))
    return out


def _merged_ms(holes: list[tuple[int, int, str]]) -> int:
    """The time the holes cover together (they may overlap)."""
    total, end = 0, 0
    for lo, hi, _ in sorted(holes):
        lo = max(lo, end)
        if hi > lo:
            total += hi - lo
            end = hi
    return total


def _rows(n: int, symbols: list[str], span_ms: int, holes: list[list[tuple[int, int, str]]],
          rnd: random.Random) -> Iterator[tuple[object, ...]]:
    """``n`` candidate rows in ROW_COLUMNS order, time-ordered, symbols round-robin; those inside a hole are
    skipped (so slightly fewer than ``n`` come out)."""
    k = len(symbols)
    mids = [10 ** rnd.uniform(-1, 5) for _ in symbols]
    ticks = [10 ** math.floor(math.log10(m) - 4) for m in mids]
    u = [1_000_000 * (i + 1) for i in range(k)]
    level_offsets = [tuple(j * t for j in range(10)) for t in ticks]
    # Level sizes from a pool (the book's shape repeats; the generator's speed is what matters here): the
    # sizes, their sums and the size-weighted depth of each side.
    pool = []
    for _ in range(256):
        sizes = [round(rnd.expovariate(1.0), 3) + 0.001 for _ in range(10)]
        total = sum(sizes)
        pool.append((sizes, total, sum(j * s for j, s in enumerate(sizes)) / total))
    iso_cache: dict[int, str] = {}
    next_hole = [0] * k
    for i in range(n):
        s = i % k
        ts = T0 + i * span_ms // n
        hs = holes[s]
        j = next_hole[s]
        while j < len(hs) and hs[j][1] <= ts:
            j += 1
        next_hole[s] = j
        if j < len(hs) and hs[j][0] <= ts:
            continue
        mid = mids[s] = mids[s] * (1.0 + rnd.gauss(0.0, 2e-5))
        tick = ticks[s]
        half = tick * (1 + (i % 3)) / 2
        b1, a1 = round((mid - half) / tick) * tick, round((mid + half) / tick) * tick
        if a1 <= b1:
            a1 = b1 + tick
        bsz, btot, bdepth = pool[(i * 7) & 255]
        asz, atot, adepth = pool[(i * 13 + 5) & 255]
        levels: list[float] = [0.0] * 40
        offs = level_offsets[s]
        levels[0:20:2] = [b1 - o for o in offs]
        levels[1:20:2] = bsz
        levels[20:40:2] = [a1 + o for o in offs]
        levels[21:40:2] = asz
        mid_p, spread = (b1 + a1) / 2, a1 - b1
        u[s] += 1
        sec = ts // 1000
        iso = iso_cache.get(sec)
        if iso is None:
            iso_cache.clear()
            iso = iso_cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        recv_ns = ts * 1_000_000 + int(rnd.lognormvariate(3.0, 0.6) * 1_000_000)
        yield (f"{iso}.{ts % 1000:03d}Z", symbols[s], "bybit", *levels, mid_p, spread, spread / mid_p * 10_000,
               btot, atot, b1 - bdepth * tick, a1 + adepth * tick, (btot - atot) / (btot + atot),
               (b1 * asz[0] + a1 * bsz[0]) / (bsz[0] + asz[0]), u[s], u[s] * 7, 1.0, "live_trading", u[s], ts,
               u[s] * 7, ts - 2, recv_ns, 50, "linear")


def build(path: Path, rows: int, symbols: int, hours: float) -> int:
    """Make the database at ``path`` (atomically: under a temporary name, then renamed); returns its rows."""
    rnd = random.Random(15)
    names = _symbols(symbols)
    span_ms = int(hours * 3_600_000)
    holes = _holes(rnd, symbols, span_ms)
    tmp = path.with_name(path.name + ".building")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp, isolation_level=None)
    # Built once, thrown away on failure: no journal, no fsync.
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.execute(schema.table_ddl(TABLE))
    for ddl in schema.index_ddl(TABLE):
        conn.execute(ddl)
    conn.execute(schema.GAPS_DDL)
    cols = schema.ROW_COLUMNS
    sql = f"INSERT INTO {TABLE} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    # Candidates spread evenly over the span, so many that ``rows`` remain once the holes' are left out.
    covered = sum(_merged_ms(hs) for hs in holes) / (symbols * span_ms)
    t0 = time.monotonic()
    gen = itertools.islice(_rows(int(rows / (1 - covered)) + symbols, names, span_ms, holes, rnd), rows)
    done = 0
    while True:
        conn.execute("BEGIN")
        cur = conn.executemany(sql, (r for _, r in zip(range(200_000), gen, strict=False)))
        n = cur.rowcount
        conn.execute("COMMIT")
        done += n
        if n:
            print(f"\r  built {done:,} rows in {time.monotonic() - t0:.0f} s", end="", file=sys.stderr, flush=True)
        if n < 200_000:
            break
    print(file=sys.stderr)
    gaps = []
    for s, hs in enumerate(holes):
        for start, end, reason in hs:
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start // 1000))
            iso_end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(end // 1000))
            gaps.append(("linear", f"orderbook.50.{names[s]}", names[s], 50, None, None, reason, iso,
                         start * 1_000_000, iso_end, end * 1_000_000))
    conn.executemany("INSERT INTO l2_gaps (category, topic, symbol, depth, last_u, got_u, reason, detected_at, "
                     "detected_ns, recovered_at, recovered_ns) VALUES (?,?,?,?,?,?,?,?,?,?,?)", gaps)
    conn.close()
    os.replace(tmp, path)
    return done


def ensure_db(cache: Path, rows: int, symbols: int, hours: float) -> Path:
    """The cached database of these parameters, built first if missing."""
    db = cache / f"report-v{BUILD_VERSION}-{rows}-{symbols}-{hours:g}h.db"
    if db.exists():
        print(f"database: {db} (cached, {db.stat().st_size / 1e9:.2f} GB)")
    else:
        print(f"building {db} ...")
        t0 = time.monotonic()
        n = build(db, rows, symbols, hours)
        print(f"database: {db}: {n:,} rows, {db.stat().st_size / 1e9:.2f} GB, built in {time.monotonic() - t0:.0f} s")
    return db


def run_report(db: Path, out: Path | None) -> dict[str, float] | None:
    """``l2rec report`` on ``db`` in a child process: its wall time, CPU time and peak RSS."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        n_rows = int(c.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
    out_dir = out if out is not None else Path(tempfile.mkdtemp(prefix="l2rec-report-bench-"))
    cmd = [sys.executable, "-m", "l2rec", "report", "--db", str(db), "--out", str(out_dir)]
    print("running:", " ".join(cmd))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        proc = subprocess.Popen(cmd, stdout=out_f, stderr=err_f, text=True)
        peak_kib = 0
        # The peak RSS from /proc/PID/status (VmHWM, the high-water mark of the process's own memory):
        # getrusage's ru_maxrss would not do, since a child started by vfork and exec inherits the parent's
        # peak (this benchmark's, which built the database) as its own.
        while proc.poll() is None:
            peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
            time.sleep(0.05)
        wall = time.monotonic() - t0
        out_f.seek(0)
        err_f.seek(0)
        stdout, stderr = out_f.read(), err_f.read()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out is None:
        shutil.rmtree(out_dir, ignore_errors=True)
    if proc.returncode != 0:
        print(stdout, stderr, sep="\n")
        print(f"l2rec report failed: exit {proc.returncode}")
        return None
    print("  " + stdout.strip())
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"rows": n_rows, "wall": wall, "cpu": user + system, "user": user, "sys": system, "rss": peak_kib / 1024}


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass  # ended between the poll and the read (or not Linux): the last figure stands
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--compare-rows", type=int, default=1_000_000,
                   help="also report on a database of this many rows (same symbols and hours), to show that "
                        "memory does not grow with the rows (0: skip)")
    p.add_argument("--symbols", type=int, default=20)
    p.add_argument("--hours", type=float, default=6.0)
    p.add_argument("--cache", default=os.environ.get("L2REC_BENCH_CACHE", "/tmp/l2rec-bench"))
    p.add_argument("--out", help="keep the largest report here (default: temporary directories, removed)")
    args = p.parse_args()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} cores)")
    sizes = sorted({n for n in (args.compare_rows, args.rows) if n > 0})
    results = []
    for n in sizes:
        db = ensure_db(cache, n, args.symbols, args.hours)
        got = run_report(db, Path(args.out) if args.out and n == sizes[-1] else None)
        if got is None:
            return 1
        results.append(got)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'rows':>12} {'wall s':>8} {'CPU s':>8} {'user':>7} {'sys':>7} {'peak RSS MiB':>13}")
    for r in results:
        print(f"{int(r['rows']):>12,} {r['wall']:>8.1f} {r['cpu']:>8.1f} {r['user']:>7.1f} {r['sys']:>7.1f} "
              f"{r['rss']:>13.0f}")
    big = results[-1]
    print(f"target: under {TARGET_S:.0f} s for {int(big['rows']):,} rows: "
          f"{'met' if big['wall'] < TARGET_S else 'NOT met'} ({big['wall']:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
