"""The benchmark, one command (issue #5): replay throughput against cryptofeed, start-up, row identity, live scale.

    pip install -e '.[bench]'
    python bench/run.py                                  # replay part: 3 runs per stream, ~4 minutes
    python bench/run.py --live-symbols 500 --live-seconds 300   # and the live scale part (~6 more minutes)
    python bench/run.py --no-replay --live-symbols 500 --live-seconds 300   # the live part only

See bench/README.md for what every figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import make_stream  # noqa: E402
from l2rec.storage.schema import ROW_COLUMNS  # noqa: E402
from tests.helpers import GAPS_TABLE, TABLE, clean_env, count_rows, supervisor_cmd  # noqa: E402
from tests.pg_server import server_cpu_s  # noqa: E402

POLL_S = 0.05
TARGET_FPS = 150_000
TARGET_RATIO = 2.5
TARGET_STARTUP_S = 0.7
TARGET_LIVE_P99_MS = 250.0
TARGET_LIVE_RSS_MB = 300.0
TARGET_DRIFT = 0.05
MACHINE_NOTE = (f"machine: {os.cpu_count()} cores, shared with other jobs (load average at start "
                f"{os.getloadavg()[0]:.2f}); figures are noisy, compare medians and look at min/max.")


# ------------------------------------------------------------------------------------ process tree watching


def hwm_bytes(pid: int) -> int | None:
    """The kernel's peak RSS of a live process (VmHWM), exact whatever the sampling interval."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class ProcStat:
    pid: int
    role: str
    created: float
    peak_rss: int = 0
    cpu_s: float = 0.0
    threads: int = 0
    fds: int = 0
    rss: int = 0
    pss: int = 0  # proportional set size: shared pages split between the processes sharing them


def _role_of(p: psutil.Process, root_pid: int) -> str:
    if p.pid == root_pid:
        return "root"
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if "resource_tracker" in cmd:
        return "resource_tracker"
    if "spawn_main" in cmd or "multiprocessing-fork" in cmd:
        return "child"
    return p.name()


class TreeWatcher:
    """Polls a process tree every ``interval`` s: peak RSS (VmHWM), CPU, threads and fds per process.

    Spawned children are named by start order: the root starts the writer first and waits until it is
    ready, then the shards (``shard-0``...). ``names`` (pid -> name, e.g. from the health dump) wins."""

    def __init__(self, root_pid: int, interval: float = POLL_S, *, pss: bool = False) -> None:
        self.root_pid = root_pid
        self.interval = interval
        self.want_pss = pss  # reads /proc/PID/smaps_rollup: fine once a second, too slow every 50 ms
        self.procs: dict[int, ProcStat] = {}
        self.names: dict[int, str] = {}
        self._handles: dict[int, psutil.Process] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-watcher", daemon=True)

    def start(self) -> TreeWatcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def sample(self) -> None:
        try:
            root = self._handles.get(self.root_pid) or psutil.Process(self.root_pid)
            self._handles[self.root_pid] = root
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for p in tree:
            p = self._handles.setdefault(p.pid, p)
            try:
                with p.oneshot():
                    st = self.procs.get(p.pid)
                    if st is None:
                        st = self.procs[p.pid] = ProcStat(p.pid, _role_of(p, self.root_pid), p.create_time())
                    elif st.role not in ("root", "child", "resource_tracker"):
                        # first seen between fork and exec, still showing the parent's command line
                        st.role = _role_of(p, self.root_pid)
                    ct = p.cpu_times()
                    st.cpu_s = ct.user + ct.system
                    st.rss = p.memory_info().rss
                    st.threads = p.num_threads()
                    st.fds = p.num_fds()
                    if self.want_pss:
                        st.pss = getattr(p.memory_full_info(), "pss", 0)
                hwm = hwm_bytes(p.pid)
                st.peak_rss = max(st.peak_rss, hwm if hwm is not None else st.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def named(self) -> dict[str, ProcStat]:
        """Processes by name: root, writer, shard-0..., resource_tracker (by start order unless named)."""
        out: dict[str, ProcStat] = {}
        children = sorted((s for s in self.procs.values() if s.role == "child"), key=lambda s: (s.created, s.pid))
        default = {s.pid: ("writer" if i == 0 else f"shard-{i - 1}") for i, s in enumerate(children)}
        for st in sorted(self.procs.values(), key=lambda s: (s.created, s.pid)):
            name = self.names.get(st.pid) or default.get(st.pid) or st.role
            while name in out:  # a restarted child: keep both incarnations
                name += "'"
            out[name] = st
        return out


# ----------------------------------------------------------------------------------------- replay runs


@dataclass
class ReplayRun:
    frames: int
    wall_s: float
    cpu_s: float  # all processes, exact (rusage of the reaped tree)
    startup_s: float | None  # exec -> last "shard started" log line
    procs: dict[str, ProcStat]
    rows: int
    gaps: int
    exitcode: int
    db: Path


def _log_time(line: str) -> float | None:
    # "2026-11-27 20:44:14,109 INFO [shard-0] ..." (local time, ms)
    try:
        head = line[:23]
        t = time.mktime(time.strptime(head[:19], "%Y-%m-%d %H:%M:%S"))
        return t + int(head[20:23]) / 1000
    except (ValueError, IndexError):
        return None


def run_replay(stream: Path, workdir: Path, frames: int) -> ReplayRun:
    """One ``python supervisor.py --replay`` run into a fresh database; all processes watched."""
    db = workdir / "replay.db"
    err_path = workdir / "stderr.txt"
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with err_path.open("wb") as err:
        t_exec = time.time()
        t0 = time.perf_counter()
        # --category: synthetic frames fit linear and spot alike, and a replay never guesses
        proc = psutil.Popen(supervisor_cmd("--replay", str(stream), "--category", "linear", "--db", str(db),
                                           "--health-file",
                                           str(workdir / "health.json"), "--log-level", "INFO"),
                            cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err)
        watcher = TreeWatcher(proc.pid).start()
        code = proc.wait(timeout=3600)
        wall = time.perf_counter() - t0
        watcher.stop()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    started = [_log_time(ln) for ln in err_path.read_text(errors="replace").splitlines() if "shard started" in ln]
    startup = max(t for t in started if t is not None) - t_exec if started and all(started) else None
    rows, gaps = _counts(db)
    if code != 0:
        print(f"  ! supervisor exited {code}; stderr tail:\n" + "\n".join(
            err_path.read_text(errors="replace").splitlines()[-10:]), file=sys.stderr)
    return ReplayRun(frames, wall, cpu, startup, watcher.named(), rows, gaps, code, db)


def _counts(db: Path) -> tuple[int, int]:
    """(rows, gap records) in the recorder's database ``db``; -1 for a table that cannot be read."""
    rows = gaps = None
    with contextlib.suppress(sqlite3.Error):
        rows, gaps = count_rows(db), count_rows(db, GAPS_TABLE)
    return -1 if rows is None else rows, -1 if gaps is None else gaps


def run_cryptofeed(stream: Path) -> dict[str, Any]:
    """One fresh process of bench/cryptofeed_driver.py; its JSON result (or {"skipped": why})."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "cryptofeed_driver.py"), str(stream), "--json"],
                         cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        return {"skipped": f"driver exited {out.returncode}: {out.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------- rows vs the reference


def _load_reference() -> Any:
    try:
        from tests import reference
    except ImportError:
        return None
    return reference


_DATA_COLS = {f"{s}_{k}_{i}" for s in ("bid", "ask") for k in ("price", "size") for i in range(1, 11)}


def _float_features(bids: list[tuple[float, float]], asks: list[tuple[float, float]], n: int,
                    bid_levels: int, ask_levels: int) -> dict[str, float | None]:
    """The documented formulas (architecture.md / README), evaluated in floats on the reference's book,
    best level first: what a float row must be, bit for bit."""
    nb, na = bids[:n], asks[:n]
    tbv = sum(s for _, s in nb) if nb else 0.0
    tav = sum(s for _, s in na) if na else 0.0
    out: dict[str, float | None] = {
        "total_bid_volume_10": tbv, "total_ask_volume_10": tav,
        "weighted_bid_price": sum(p * s for p, s in nb) / tbv if tbv else None,
        "weighted_ask_price": sum(p * s for p, s in na) / tav if tav else None,
        "mid_price": None, "spread": None, "spread_bps": None, "microprice": None, "order_book_imbalance": None,
        "data_quality_score": min(1.0, bid_levels / n, ask_levels / n),
    }
    if bids and asks:
        (b1, bs1), (a1, as1) = bids[0], asks[0]
        mid = (b1 + a1) / 2
        out.update(mid_price=mid, spread=a1 - b1, spread_bps=(a1 - b1) / mid * 10_000,
                   microprice=(b1 * as1 + a1 * bs1) / (bs1 + as1), order_book_imbalance=(tbv - tav) / (tbv + tav))
    return out


@dataclass
class CheckResult:
    frames: int = 0
    ref_rows: int = 0
    db_rows: int = 0
    exact_mismatches: int = 0
    first_problems: list[str] = field(default_factory=list)
    max_rel_err: dict[str, float] = field(default_factory=dict)
    tol_failures: int = 0
    digest_db: str = ""
    digest_ref: str = ""
    skipped: str | None = None


def check_rows(stream: Path, db: Path, limit: int) -> CheckResult:
    """The recorder's committed rows against tests/reference.py (json + Decimal, book re-sorted per row).

    Tolerance-free: every column the reference defines is compared for equality after the reference's
    exact Decimal is turned into the float the documented formula gives on the same book (prices, sizes,
    ids, timestamps and texts are plain conversions; derived features are the formula evaluated in floats,
    best level first). The weighted prices, which the reference does not define, get the same treatment;
    ``update_id``/``sequence_id`` are ``u``/``seq`` as the README documents; ``recv_time_ns`` is NULL in both.
    Separately, each derived feature's relative error against the exact Decimal value is reported.
    """
    res = CheckResult()
    ref_mod = _load_reference()
    if ref_mod is None:
        res.skipped = "tests/reference.py not found"
        return res
    ref = ref_mod.RefRecorder(category="linear", data_source="replay")
    want: list[tuple[object, ...]] = []
    exact: list[dict[str, object]] = []
    cols = list(ROW_COLUMNS)
    with stream.open("rb") as fh:
        for i, line in enumerate(fh):
            if limit and i >= limit:
                break
            res.frames += 1
            _kind, row = ref.feed(line.strip())
            if row is None:
                continue
            t = ref.topics[f"orderbook.{row['depth']}.{row['symbol']}"]
            bids = [(float(p), float(s)) for p, s in sorted(t.bids.items(), reverse=True)[:10]]
            asks = [(float(p), float(s)) for p, s in sorted(t.asks.items())[:10]]
            feats = _float_features(bids, asks, ref.n, len(t.bids), len(t.asks))
            full = {c: (float(v) if isinstance(v, Decimal) else v) for c, v in row.items()}
            full.update(feats)
            # Seed columns the reference leaves out; README: update_id = u, sequence_id = seq.
            full["update_id"], full["sequence_id"] = full["sequence"], full["cross_sequence"]
            want.append(tuple(full.get(c) for c in cols))
            exact.append(row)
    res.ref_rows = len(want)
    keys = {(r[cols.index("symbol")], r[cols.index("sequence")]) for r in want}
    last_ts = max((r[cols.index("exchange_timestamp")] for r in want), default=0)
    with contextlib.closing(sqlite3.connect(db)) as c:
        got_all = c.execute(f"SELECT {', '.join(cols)} FROM {TABLE} WHERE exchange_timestamp <= ? "
                            "ORDER BY exchange_timestamp, symbol, sequence", (last_ts,)).fetchall()
    si, qi = cols.index("symbol"), cols.index("sequence")
    got = [r for r in got_all if (r[si], r[qi]) in keys]
    res.db_rows = len(got)
    want.sort(key=lambda r: (r[cols.index("exchange_timestamp")], r[si], r[qi]))  # type: ignore[return-value]
    exact.sort(key=lambda r: (r["exchange_timestamp"], r["symbol"], r["sequence"]))  # type: ignore[return-value]
    h_db, h_ref = hashlib.sha256(), hashlib.sha256()
    for g, w, x in zip(got, want, exact, strict=False):
        h_db.update(repr(g).encode())
        h_ref.update(repr(w).encode())
        bad = [f"{c}: db {gv!r} != ref {wv!r}" for c, gv, wv in zip(cols, g, w, strict=True)
               if type(gv) is not type(wv) or gv != wv]
        if bad:
            res.exact_mismatches += 1
            if len(res.first_problems) < 5:
                res.first_problems.append(f"{g[si]} u={g[qi]}: " + "; ".join(bad[:4]))
        gd = dict(zip(cols, g, strict=True))
        for c, v in x.items():
            if isinstance(v, Decimal) and c not in _DATA_COLS and v != 0 and isinstance(gd.get(c), float):
                err = abs(gd[c] - float(v)) / abs(float(v))  # type: ignore[operator]
                res.max_rel_err[c] = max(res.max_rel_err.get(c, 0.0), err)
        if ref_mod.diff_row(gd, x):
            res.tol_failures += 1
    res.digest_db, res.digest_ref = h_db.hexdigest()[:16], h_ref.hexdigest()[:16]
    return res


# ----------------------------------------------------------------------------------------------- report


def med_range(xs: Sequence[float | None], fmt: str = "{:,.0f}") -> str:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(statistics.median(vals))} [{fmt.format(min(vals))}-{fmt.format(max(vals))}]"


def _mb(b: float) -> float:
    return b / 2**20


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def replay_part(args: argparse.Namespace) -> dict[str, Any]:
    cache: Path = args.cache
    streams = {n: make_stream.ensure_stream(cache, n, args.frames, args.seed) for n in args.symbols}
    one = make_stream.ensure_one_frame(cache, args.seed)
    work = Path(tempfile.mkdtemp(prefix="l2rec-bench-"))
    results: dict[str, Any] = {"baseline": [], "streams": {}}
    try:
        print(f"\nreplay: {args.runs} run(s) each; streams in {cache}; databases in {work} (removed after)")
        for i in range(args.runs):
            d = work / f"one-{i}"
            d.mkdir()
            r = run_replay(one, d, 1)
            results["baseline"].append(r)
            su = "n/a" if r.startup_s is None else f"{r.startup_s:.3f}"
            print(f"  one-frame baseline run {i + 1}: wall {r.wall_s:.3f} s, start-up {su} s, rows {r.rows}, "
                  f"exit {r.exitcode}")
        base_wall = statistics.median(r.wall_s for r in results["baseline"])
        base_cpu = statistics.median(r.cpu_s for r in results["baseline"])
        for n, path in streams.items():
            runs: list[ReplayRun] = []
            cf: list[dict[str, Any]] = []
            for i in range(args.runs):
                d = work / f"s{n}-{i}"
                d.mkdir()
                r = run_replay(path, d, args.frames)
                runs.append(r)
                fps = r.frames / (r.wall_s - base_wall) if r.wall_s > base_wall else float("nan")
                print(f"  {n} symbol(s) run {i + 1}: wall {r.wall_s:.2f} s -> {fps:,.0f} frames/s steady, "
                      f"CPU {r.cpu_s:.2f} s, rows {r.rows}/{r.frames}, gaps {r.gaps}, exit {r.exitcode}")
                if not args.skip_cryptofeed:
                    c = run_cryptofeed(path)
                    cf.append(c)
                    if "skipped" in c:
                        print(f"  cryptofeed: SKIPPED: {c['skipped']}")
                    else:
                        print(f"  cryptofeed run {i + 1}: {c['wall_s']:.2f} s -> {c['frames_per_s']:,.0f} frames/s, "
                              f"CPU {c['cpu_s']:.2f} s")
            check = None
            if not args.no_check and n in args.check_symbols:
                t = time.perf_counter()
                check = check_rows(path, runs[0].db, args.check_frames)
                print(f"  rows vs tests/reference.py ({n} symbol(s), first {check.frames} frames): "
                      f"{check.ref_rows} reference rows, {check.db_rows} db rows, {check.exact_mismatches} rows "
                      f"not bit-identical, {check.tol_failures} outside the 1e-12 tolerance "
                      f"({time.perf_counter() - t:.1f} s)")
            # keep only one database per stream, for the check; the others go now (disk)
            for r in runs[1:]:
                with contextlib.suppress(OSError):
                    shutil.rmtree(r.db.parent)
            results["streams"][n] = {"runs": runs, "cf": cf, "check": check}
        _print_replay(results, base_wall, base_cpu, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def _print_replay(results: dict[str, Any], base_wall: float, base_cpu: float, args: argparse.Namespace) -> None:
    base: list[ReplayRun] = results["baseline"]
    header = ["figure"]
    cols: list[list[str]] = []
    names: list[str] = []
    for n, s in results["streams"].items():
        runs: list[ReplayRun] = s["runs"]
        cf = [c for c in s["cf"] if "skipped" not in c]
        header.append(f"{n} symbol(s), {runs[0].frames:,} frames")
        fps = [r.frames / (r.wall_s - base_wall) if r.wall_s > base_wall else None for r in runs]
        fps_raw = [r.frames / r.wall_s for r in runs]
        cpu_k = [max(0.0, r.cpu_s - base_cpu) / r.frames * 1000 for r in runs]
        cf_fps = [c["frames_per_s"] for c in cf]
        cf_cpu_k = [c["cpu_s"] / c["frames"] * 1000 for c in cf]
        ratio = [f / statistics.median(cf_fps) for f in fps if f] if cf_fps else []
        col = [
            med_range(fps),
            med_range(fps_raw),
            med_range(cf_fps) if cf else "skipped: " + str(s["cf"][0]["skipped"])[:60] if s["cf"] else "not run",
            med_range(ratio, "{:.2f}x") if ratio else "n/a",
            med_range(cpu_k, "{:.3f}"),
            med_range(cf_cpu_k, "{:.3f}") if cf else "n/a",
        ]
        procs = sorted({name for r in runs for name in r.procs})
        names = sorted(set(names) | set(procs))
        per_proc = {name: med_range([_mb(r.procs[name].peak_rss) for r in runs if name in r.procs], "{:.1f}")
                    for name in procs}
        per_cpu = {name: med_range([r.procs[name].cpu_s for r in runs if name in r.procs], "{:.2f}")
                   for name in procs}
        col.append(f"{med_range([_mb(c['rss_before_loop_bytes']) for c in cf], '{:.1f}')} -> "
                   f"{med_range([_mb(c['rss_after_loop_bytes']) for c in cf], '{:.1f}')}; peak "
                   f"{med_range([_mb(c['peak_rss_bytes']) for c in cf], '{:.1f}')}" if cf else "n/a")
        col.append(f"{sum(r.rows == r.frames and r.gaps == 0 and r.exitcode == 0 for r in runs)}/{len(runs)}")
        chk = s["check"]
        if chk is None:
            col.append("not checked")
        elif chk.skipped:
            col.append(f"skipped: {chk.skipped}")
        else:
            ok = chk.exact_mismatches == 0 and chk.ref_rows == chk.db_rows
            col.append(f"{'identical' if ok else 'DIFFERENT'}: {chk.db_rows}/{chk.ref_rows} rows "
                       f"(sha {chk.digest_db}{'=' if chk.digest_db == chk.digest_ref else '!='}{chk.digest_ref})")
        cols.append(col)
        s["_per_proc"] = per_proc
        s["_per_cpu"] = per_cpu
    labels = [
        "frames/s end to end, steady (wall - 1-frame replay)",
        "frames/s end to end, raw (frames / whole wall)",
        "cryptofeed handler + features, frames/s",
        f"ratio recorder steady / cryptofeed median (target >= {TARGET_RATIO}x)",
        "recorder CPU s per 1k frames, all processes (minus 1-frame run)",
        "cryptofeed CPU s per 1k frames",
        "cryptofeed RSS before -> after the loop (stream held in memory); peak, MiB",
        "runs with rows == frames, no gaps, exit 0",
        "rows vs reference (bit for bit)",
    ]
    rows = [[lab, *[c[i] for c in cols]] for i, lab in enumerate(labels)]
    for name in names:
        rows.append([f"peak RSS {name}, MiB",
                     *[s["_per_proc"].get(name, "-") for s in results["streams"].values()]])
    for name in names:
        rows.append([f"CPU s {name}", *[s["_per_cpu"].get(name, "-") for s in results["streams"].values()]])
    print_table(f"Replay into SQLite: median [min-max] of {args.runs} run(s). {MACHINE_NOTE}", header, rows)
    startup = [r.startup_s for r in base]
    print(f"\n1-frame replay (start-up + 1 row + clean stop), wall: {med_range([r.wall_s for r in base], '{:.3f}')} s; "
          f"CPU {med_range([r.cpu_s for r in base], '{:.2f}')} s; peak RSS total "
          f"{med_range([_mb(sum(p.peak_rss for p in r.procs.values())) for r in base], '{:.1f}')} MiB")
    print(f"start-up of all processes (exec -> last shard's 'shard started'): {med_range(startup, '{:.3f}')} s "
          f"(target < {TARGET_STARTUP_S} s)")
    for n, s in results["streams"].items():
        chk = s["check"]
        if chk is not None and not chk.skipped:
            errs = ", ".join(f"{c} {e:.1e}" for c, e in sorted(chk.max_rel_err.items()))
            print(f"{n} symbol(s): max relative error of derived features vs exact Decimal: {errs}")
            for p in chk.first_problems:
                print(f"  mismatch: {p}")
    # targets
    print("\nTargets (replay):")
    for n, s in results["streams"].items():
        runs = s["runs"]
        fps = statistics.median(r.frames / (r.wall_s - base_wall) for r in runs if r.wall_s > base_wall)
        line = f"  {n} symbol(s): {fps:,.0f} frames/s steady vs {TARGET_FPS:,} -> "
        line += "MET" if fps >= TARGET_FPS else f"NOT MET ({fps / TARGET_FPS:.0%} of target)"
        cf = [c["frames_per_s"] for c in s["cf"] if "skipped" not in c]
        if cf:
            ratio = fps / statistics.median(cf)
            line += f"; {ratio:.2f}x cryptofeed vs {TARGET_RATIO}x -> "
            line += "MET" if ratio >= TARGET_RATIO else "NOT MET"
        print(line)
    su = [x for x in startup if x is not None]
    if su:
        m = statistics.median(su)
        print(f"  start-up: {m:.3f} s vs {TARGET_STARTUP_S} s -> {'MET' if m < TARGET_STARTUP_S else 'NOT MET'}")


# ------------------------------------------------------------------------------------------------ live


def _fake_server(conn: Any, symbols: list[str], specs: dict[str, tuple[float, float]], interval_ms: float,
                 seed: int) -> None:
    """Child process: the fake Bybit server in load mode (pre-serialised frame rings, one write per connection
    per tick, counters only), so that its event loop has a GIL of its own. Answers "count" with its public
    counters; "stop" stops it and answers the final ones."""
    sys.path.insert(0, str(ROOT))
    from tests.fakes.bybit_server import FakeBybit

    srv = FakeBybit(symbols=symbols, interval_ms=interval_ms, specs=specs, seed=seed, load=True).start(timeout=120)
    conn.send(srv.url)
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            srv.stop()
        conn.send({"sent": srv.sent_count(), "t": time.time(), **srv.load_stats()})
        if cmd == "stop":
            return


@dataclass
class LiveSample:
    t: float
    sent: int
    committed: int
    procs: dict[str, ProcStat]
    link_depth: int | None = None
    mailboxes: int | None = None
    writer_p99_ms: float | None = None
    writer_committed: int | None = None
    fake_cpu_s: float = 0.0  # the fake's process, user + system
    fake_loop_cpu_s: float = 0.0  # the fake's event-loop thread (all of its sending)
    fake_buffered: int = 0  # bytes written by the fake but still in its transports' buffers
    bench_cpu_s: float = 0.0  # this process (latency probe, psutil watcher, health dumps), user + system
    server_cpu_s: float = 0.0  # a local PostgreSQL server the recorder writes into (bench/postgres.py)
    # From the shards' books (health dump): frames that will never be rows -- shed under backpressure, or
    # received while their topic was out of sync (in_gap), or that opened a gap, or stale/rejected.
    lost: int | None = None
    rows_shed: int | None = None

    @property
    def in_flight(self) -> int:
        """Sent, not committed, and not (yet) given up by the recorder: the real queue."""
        return self.sent - self.committed - (self.lost or 0)


class LatencyProbe:
    """Receive-to-commit latency from the database: every ``interval`` s read the rows committed since the
    last look (``rowid`` above the last seen) and take now - ``recv_time_ns`` for each. An upper bound of the
    true latency by at most the poll interval plus the query time."""

    def __init__(self, db: Path, interval: float = 0.02) -> None:
        self.db = db
        self.interval = interval
        self.lat_ms: list[tuple[float, float]] = []  # (observed at, latency ms)
        self.last_rowid = 0  # rows are never deleted and ids autoincrement: the committed row count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def start(self) -> LatencyProbe:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        while not self._stop.wait(self.interval):
            try:
                if conn is None:
                    if not self.db.exists():
                        continue
                    conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1)
                rows = conn.execute(f"SELECT rowid, recv_time_ns FROM {TABLE} WHERE rowid > ? ORDER BY rowid",
                                    (self.last_rowid,)).fetchall()
                now_ns = time.time_ns()
            except sqlite3.Error:
                continue
            if rows:
                self.last_rowid = rows[-1][0]
                t = now_ns / 1e9
                self.lat_ms.extend((t, (now_ns - r[1]) / 1e6) for r in rows if r[1] is not None)
        if conn is not None:
            conn.close()


class PgLatencyProbe(LatencyProbe):
    """The same probe on a PostgreSQL table (bench/postgres.py): rows with ``id`` above the last seen (one
    writer, no conflicts live: ids follow the commits). Its backend runs on the server, so its CPU is
    taken out of the server's figure (``backend_cpu_s``)."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        super().__init__(Path(), interval)
        self.url = url
        self.backend_pid: int | None = None

    def backend_cpu_s(self) -> float:
        if self.backend_pid is None:
            return 0.0
        try:
            t = psutil.Process(self.backend_pid).cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0

    def _run(self) -> None:
        import psycopg

        conn: psycopg.Connection[Any] | None = None
        while not self._stop.wait(self.interval):
            try:
                if conn is None:
                    conn = psycopg.connect(self.url, autocommit=True)
                    # a table that was never analysed looks empty to the planner, which then scans and sorts
                    # all of it every 20 ms (measured: more server CPU than the recorder's inserts)
                    conn.execute("SET enable_seqscan = off")
                    self.backend_pid = int(conn.execute("SELECT pg_backend_pid()").fetchall()[0][0])
                rows = conn.execute(f"SELECT id, recv_time_ns FROM {TABLE} WHERE id > %s ORDER BY id",
                                    (self.last_rowid,)).fetchall()
                now_ns = time.time_ns()
            except psycopg.Error:
                if conn is not None and conn.broken:
                    conn.close()
                    conn = None
                continue
            if rows:
                self.last_rowid = rows[-1][0]
                t = now_ns / 1e9
                self.lat_ms.extend((t, (now_ns - r[1]) / 1e6) for r in rows if r[1] is not None)
        if conn is not None:
            conn.close()


def _pg_counts(url: str) -> tuple[int, int]:
    """(rows, gap records) in a PostgreSQL database; -1 for what cannot be read."""
    import psycopg

    try:
        with psycopg.connect(url) as conn:
            rows, gaps = (conn.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in (TABLE, GAPS_TABLE))
            return int(rows), int(gaps)
    except psycopg.Error:
        return -1, -1


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value) points."""
    if len(points) < 2:
        return float("nan")
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den else float("nan")


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


class LiveProfile:
    """``py-spy record --subprocesses --gil`` over the recorder's process tree for ``secs`` during the live
    run (``--live-profile DIR``). Only GIL-holding samples: the shares are CPU work per process."""

    def __init__(self, out_dir: Path, n: int, start_s: float, secs: float = 20.0) -> None:
        self.out_dir, self.start_s, self.secs = out_dir, start_s, secs
        self.raw = out_dir / f"live_{n}sym_gil.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.window: tuple[float, float] | None = None

    def maybe_start(self, t: float, pid: int) -> None:
        if self.proc is not None or t < self.start_s:
            return
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([pyspy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--rate", "100",
                                      "--duration", str(int(self.secs)), "--format", "raw", "-o", str(self.raw)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.window = (t, t + self.secs)
        print(f"  py-spy --gil over the recorder's processes from t={t:.0f} s for {self.secs:.0f} s -> {self.raw}",
              flush=True)

    def finish(self) -> None:
        if self.proc is None:
            return
        try:
            _, err = self.proc.communicate(timeout=self.secs + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        if not self.raw.exists():
            print(f"live profile: py-spy failed ({self.proc.returncode}): {err.decode(errors='replace')[-500:]}")
            return
        summary = summarize_pyspy(self.raw)
        (self.out_dir / f"{self.raw.stem}.summary.txt").write_text(summary + "\n")
        assert self.window is not None
        print(f"\nLive profile (py-spy --gil, t={self.window[0]:.0f}-{self.window[1]:.0f} s; raw stacks in "
              f"{self.raw}):{summary}")


def live_part(args: argparse.Namespace) -> None:
    import multiprocessing

    n, secs = args.live_symbols, args.live_seconds
    specs_l = make_stream.symbol_specs(n)
    symbols = [s for s, *_ in specs_l]
    # The fake builds every depth's book (1000 included) for each symbol: keep only specs that allow it
    # (mid >= ~7,900 ticks), the others get the fake's default (mid 100, tick 0.01).
    specs = {s: (mid, tick) for s, mid, tick, _ in specs_l if mid / tick >= 10_000}
    work = Path(tempfile.mkdtemp(prefix="l2rec-live-"))
    db, health = work / "live.db", work / "health.json"
    pg_url: str | None = getattr(args, "pg_url", None)  # bench/postgres.py: into PostgreSQL instead
    pg_data: Path | None = getattr(args, "pg_data_dir", None)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    print(f"\nlive: {n} symbols x orderbook.50 every 20 ms = {n * 50:,} frames/s offered, for {secs:.0f} s; "
          f"fake server (load mode) in its own process on the same {os.cpu_count()} cores; work dir {work}")
    t_fake = time.time()
    fake = ctx.Process(target=_fake_server, args=(child, symbols, specs, 20.0, args.seed), name="fake-bybit")
    fake.start()
    deadline = time.monotonic() + 180
    while not parent.poll(0.2):
        if not fake.is_alive() or time.monotonic() > deadline:
            fake.kill()
            shutil.rmtree(work, ignore_errors=True)
            raise SystemExit("the fake server did not start (see its traceback above)")
    url = parent.recv()
    print(f"  fake server ready in {time.time() - t_fake:.1f} s (frame rings built)", flush=True)
    fake_ps = psutil.Process(fake.pid)
    err = (work / "stderr.txt").open("wb")
    t_exec = time.time()
    # issue 12: retention of a few minutes and an archive, so the database should stop growing
    extra_env: dict[str, str] = {}
    if args.live_retention_hours:
        extra_env["L2REC_DATA_RETENTION_HOURS"] = str(args.live_retention_hours)
        extra_env["L2REC_CLEANUP_INTERVAL_S"] = "10"
    if args.live_archive:
        extra_env["L2REC_ARCHIVE_DIR"] = str(work / "archive")
    for item in args.live_env:  # e.g. L2REC_WRITE_INTERVAL=0.1: a setting tried without editing code
        key, _, value = item.partition("=")
        extra_env[key] = value
    if args.live_env:
        print(f"  recorder environment: {' '.join(args.live_env)}")
    proc = psutil.Popen(supervisor_cmd("--ws-url", url, "--symbols", ",".join(symbols), "--db", pg_url or str(db),
                                       "--health-file", str(health), "--log-level", "INFO"),
                        cwd=ROOT, env=clean_env(**extra_env), stdout=subprocess.DEVNULL, stderr=err)
    db_sizes: list[tuple[float, int]] = []  # (t, bytes of the database file)
    watcher = TreeWatcher(proc.pid, interval=1.0, pss=True).start()
    probe = (PgLatencyProbe(pg_url) if pg_url else LatencyProbe(db)).start()
    profile = (LiveProfile(args.live_profile, n, max(15.0, secs / 2 - 10), min(20.0, secs / 3))
               if args.live_profile else None)
    samples: list[LiveSample] = []
    has_writer_lat = False
    storage_status: dict[str, Any] = {}  # the writer's db / retention / archive sections, last seen
    load: list[tuple[float, float]] = []  # (t, 1-minute load average)
    t_start = time.time()
    try:
        next_t = t_start
        while time.time() - t_start < secs and proc.poll() is None:
            next_t += 1.0
            time.sleep(max(0.0, next_t - time.time()))
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGUSR1)
            parent.send("count")
            fstat = parent.recv()
            committed = probe.last_rowid  # read together with the fake's count: the backlog is not skewed
            fct = fake_ps.cpu_times()
            t_s = time.time() - t_start
            time.sleep(0.15)  # let the root write the dump
            s = LiveSample(t_s, fstat["sent"], committed, {k: ProcStat(**vars(v)) for k, v in watcher.named().items()},
                           fake_cpu_s=fct.user + fct.system, fake_loop_cpu_s=fstat.get("loop_cpu_s", 0.0),
                           fake_buffered=fstat.get("buffered_bytes", 0), bench_cpu_s=sum(os.times()[:2]),
                           server_cpu_s=server_cpu_s(pg_data) - (probe.backend_cpu_s()
                                                                 if isinstance(probe, PgLatencyProbe) else 0.0))
            with contextlib.suppress(OSError, ValueError):
                dump = json.loads(health.read_text())
                watcher.names = {int(p["pid"]): name for name, p in dump.get("processes", {}).items() if "pid" in p}
                actors = dump.get("actors", {})
                w = actors.get("writer:writer", {})
                storage_status = {k: w[k] for k in ("db", "retention", "archive") if k in w} or storage_status
                s.writer_committed = int(w.get("rows_committed", 0))
                r2c = w.get("recv_to_commit_ms")
                if isinstance(r2c, dict) and r2c.get("p99") is not None:
                    has_writer_lat = True
                    s.writer_p99_ms = float(r2c["p99"])
                s.link_depth = sum(int(a.get("writer_link", {}).get("depth_rows", 0)) for k, a in actors.items()
                                   if k.endswith(":features"))
                s.mailboxes = sum(int(a.get("mailbox", 0)) for k, a in actors.items() if k.startswith("shard:"))
                feats = [a for k, a in actors.items() if k.endswith(":features")]
                s.rows_shed = sum(int(a.get("rows_shed", 0)) for a in feats)
                s.lost = sum(int(t.get(f, 0)) for a in feats for t in a.get("topics", {}).values()
                             for f in ("in_gap", "gaps", "stale", "rejected"))
            samples.append(s)
            load.append((s.t, os.getloadavg()[0]))
            with contextlib.suppress(OSError):
                db_sizes.append((s.t, db.stat().st_size))
            if profile is not None:
                profile.maybe_start(s.t, proc.pid)
            if len(samples) % 10 == 0:
                prev = samples[-11] if len(samples) > 10 else samples[0]
                dt = max(1e-9, s.t - prev.t)
                print(f"  t={s.t:5.0f} s sent {s.sent:,} ({(s.sent - prev.sent) / dt:,.0f}/s) committed "
                      f"{s.committed:,} ({(s.committed - prev.committed) / dt:,.0f}/s) in flight "
                      f"{s.in_flight:,} not recorded {s.lost} link depth {s.link_depth} mailboxes {s.mailboxes} "
                      "total RSS "
                      f"{_mb(sum(p.rss for p in s.procs.values())):.0f} MiB fake CPU "
                      f"{(s.fake_cpu_s - prev.fake_cpu_s) / dt:.0%} load {load[-1][1]:.2f}", flush=True)
    finally:
        t_stop = time.time()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        stop_s = time.time() - t_stop
        watcher.stop()
        time.sleep(0.1)
        probe.stop()
        parent.send("stop")
        final = parent.recv() if parent.poll(30) else None
        fake.join(timeout=30)
        err.close()
    if profile is not None:
        profile.finish()
    rows_total, gaps = _pg_counts(pg_url) if pg_url else _counts(db)
    log_lines = (work / "stderr.txt").read_text(errors="replace").splitlines()
    started = [_log_time(ln) for ln in log_lines if "shard started" in ln]
    startup = max(t for t in started if t is not None) - t_exec if started and all(started) else None
    _print_log_summary(log_lines)
    _print_live(args, samples, probe, t_start, load, final, rows_total, gaps, code, stop_s, startup, has_writer_lat,
                profile.window if profile is not None else None, db_sizes, storage_status)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"kept {work}")


def _print_log_summary(lines: list[str], top: int = 10) -> None:
    """The recorder's WARNING/ERROR/CRITICAL log lines, by message (the timestamp cut off), most frequent first:
    shedding, lost batches at exit and the like must not go unnoticed behind the figures."""
    import collections
    import re

    level = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
    counts: collections.Counter[str] = collections.Counter()
    for ln in lines:
        m = level.search(ln[:60])
        if m:
            counts[ln[m.start():][:200]] += 1
    if not counts:
        print("\nrecorder log: no WARNING/ERROR/CRITICAL lines")
        return
    print(f"\nrecorder log: {sum(counts.values())} WARNING/ERROR/CRITICAL lines; most frequent:")
    for msg, c in counts.most_common(top):
        print(f"  {c:6d} x {msg}")


def _print_live(args: argparse.Namespace, samples: list[LiveSample], probe: LatencyProbe, t_start: float,
                load: list[tuple[float, float]], final: dict[str, Any] | None, rows_total: int, gaps: int,
                code: int | None, stop_s: float, startup: float | None, has_writer_lat: bool,
                profiled: tuple[float, float] | None, db_sizes: list[tuple[float, int]] | None = None,
                storage_status: dict[str, Any] | None = None) -> None:
    if len(samples) < 3:
        print("live: too few samples")
        return
    n = args.live_symbols
    warm = min(10.0, samples[-1].t / 4)  # skip the subscribe / snapshot burst
    steady = [s for s in samples if s.t >= warm]
    if len(steady) < 2:
        print("live: the steady window is empty")
        return
    # rates and the backlog trend: least-squares slopes over the steady window (robust to sampling jitter)
    sent_fps = _slope([(s.t, s.sent) for s in steady])
    comm_fps = _slope([(s.t, s.committed) for s in steady])
    backlog = [(s.t, s.in_flight) for s in steady]
    slope = _slope(backlog)
    lat_steady = [ms for t, ms in probe.lat_ms if t - t_start >= warm]
    wp99 = [s.writer_p99_ms for s in steady if s.writer_p99_ms is not None]
    minute1 = next((s for s in samples if s.t >= min(60.0, samples[-1].t / 2)), samples[len(samples) // 2])
    first, end = steady[0], samples[-1]
    span = max(1e-9, end.t - first.t)
    frames_steady = max(1, end.sent - first.sent)

    def tot(s: LiveSample, attr: str) -> float:
        return float(sum(getattr(p, attr) for name, p in s.procs.items()))

    rss1, rss2 = _mb(tot(minute1, "rss")), _mb(tot(end, "rss"))
    th1, th2 = tot(minute1, "threads"), tot(end, "threads")
    fd1, fd2 = tot(minute1, "fds"), tot(end, "fds")
    loads = [x for t, x in load if t >= warm]
    depths = [s.link_depth for s in steady if s.link_depth is not None]
    print(f"\nLive scale: {n} symbols ({n * 50:,} frames/s offered), {samples[-1].t:.0f} s, "
          f"{len(end.procs)} recorder processes. {MACHINE_NOTE}")
    print(f"1-minute load average during the run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f} (the bench's own processes included: recorder, fake server, this process).")
    print("The fake server runs on the same 2 cores (its own process, load mode): its CPU competes with the "
          "recorder's.")
    if profiled is not None:
        print(f"py-spy sampled the recorder from t={profiled[0]:.0f} to {profiled[1]:.0f} s (inside the window).")
    rows = [
        ["frames/s sent by the fake (steady window)", f"{sent_fps:,.0f}"],
        ["rows/s committed (steady window)", f"{comm_fps:,.0f}"],
        ["fake server CPU, % of one core (steady window)", f"{(end.fake_cpu_s - first.fake_cpu_s) / span:.1%}"],
        ["fake server CPU per frame sent: process / its event-loop thread, us",
         f"{(end.fake_cpu_s - first.fake_cpu_s) / frames_steady * 1e6:.1f} / "
         f"{(end.fake_loop_cpu_s - first.fake_loop_cpu_s) / frames_steady * 1e6:.1f}"],
        *([["PostgreSQL server CPU, % of one core / us per frame sent (steady window)",
             f"{(end.server_cpu_s - first.server_cpu_s) / span:.1%} / "
             f"{(end.server_cpu_s - first.server_cpu_s) / frames_steady * 1e6:.1f}"]] if end.server_cpu_s else []),
        ["this bench process's CPU (DB latency probe, psutil), % of one core (steady window)",
         f"{(end.bench_cpu_s - first.bench_cpu_s) / span:.1%}"],
        ["fake's unsent write buffer (written, not yet taken by the kernel), KiB max / end",
         f"{max(s.fake_buffered for s in steady) / 1024:,.0f} / {end.fake_buffered / 1024:,.0f}"],
        ["in flight (sent - committed - not recorded): start / end of steady window",
         f"{backlog[0][1]:,} / {backlog[-1][1]:,}"],
        ["in-flight slope (frames/s; ~0 = no queue growth)", f"{slope:,.1f}"],
        ["not recorded (gaps: shed under backpressure, out of sync until resubscribed), frames/s (steady)",
         f"{_slope([(s.t, s.lost or 0) for s in steady]):,.0f} (rows shed in all: {end.rows_shed})"],
        ["writer link depth (rows, all shards) min / median / max / end",
         f"{min_(depths)} / {med_or_nan([float(d) for d in depths]):.0f} / {max_(depths)} / {end.link_depth}"],
        ["actor mailboxes (sum) min / max / end",
         f"{min_(s.mailboxes for s in steady)} / {max_(s.mailboxes for s in steady)} / {end.mailboxes}"],
        ["recv-to-commit p50 / p99 / max, ms (DB probe, steady)",
         f"{_pct(lat_steady, .5):.0f} / {_pct(lat_steady, .99):.0f} / {max(lat_steady, default=float('nan')):.0f}"],
        ["recv-to-commit p99, ms (writer's rolling p99 of its last 20k rows: median / max over the dumps)",
         f"{med_or_nan(wp99):.0f} / {max(wp99):.0f}" if has_writer_lat and wp99 else "not exposed"],
        [f"total RSS, MiB at t={minute1.t:.0f} s / end", f"{rss1:.0f} / {rss2:.0f} ({_drift(rss1, rss2)})"],
        [f"total PSS (shared pages counted once), MiB at t={minute1.t:.0f} s / end",
         f"{_mb(tot(minute1, 'pss')):.0f} / {_mb(tot(end, 'pss')):.0f}"],
        [f"threads at t={minute1.t:.0f} s / end", f"{th1:.0f} / {th2:.0f} ({_drift(th1, th2)})"],
        [f"open fds at t={minute1.t:.0f} s / end", f"{fd1:.0f} / {fd2:.0f} ({_drift(fd1, fd2)})"],
        ["start-up (exec -> last 'shard started')", f"{startup:.2f} s" if startup is not None else "n/a"],
        ["stop after SIGTERM, s; exit code", f"{stop_s:.1f}; {code}"],
        ["frames sent (total) / rows in DB / gap records (after SIGTERM: every frame a row, or inside a gap)",
         f"{final['sent'] if final else '?'} / {rows_total} / {gaps}"],
    ]
    for name, p in sorted(end.procs.items()):
        p1 = first.procs.get(name)
        pct = f"{(p.cpu_s - p1.cpu_s) / span:.0%}" if p1 is not None else "n/a"
        rows.append([f"RSS / threads / fds / CPU s (CPU % of a core, steady): {name}",
                     f"{_mb(p.rss):.0f} MiB / {p.threads} / {p.fds} / {p.cpu_s:.1f} ({pct})"])
    print_table("", ["figure", "value"], rows)
    step = max(1, len(samples) // 12)
    series = []
    for i in range(0, len(samples), step):
        s = samples[i]
        prev = samples[max(0, i - step)]
        dt = max(1e-9, s.t - prev.t)
        series.append([f"{s.t:.0f}", f"{(s.sent - prev.sent) / dt:,.0f}", f"{(s.committed - prev.committed) / dt:,.0f}",
                       f"{s.in_flight:,}", f"{s.lost}", str(s.link_depth), str(s.mailboxes),
                       f"{_mb(tot(s, 'rss')):.0f}", f"{tot(s, 'threads'):.0f}", f"{tot(s, 'fds'):.0f}",
                       f"{next((x for t, x in load if t >= s.t), load[-1][1]):.1f}"])
    print_table("Over time (rates over the preceding interval; in flight = sent - committed - not recorded, i.e. "
                "everything between the fake's buffers and the commit; not recorded = cumulative frames that became "
                "gaps):",
                ["t s", "sent/s", "committed/s", "in flight", "not recorded", "link rows", "mailboxes", "RSS MiB",
                 "threads", "fds", "load"], series)
    print(f"(latency: {len(lat_steady):,} rows after the first {warm:.0f} s; method: the bench polls the database "
          "every 20 ms for rows above the last rowid seen, latency = time of that poll - recv_time_ns of the row, "
          "so an upper bound of receive-to-commit by at most 20 ms + the query time)")
    print("\nTargets (live):")
    offered = n * 50
    p99 = _pct(lat_steady, .99)
    short = " (the fake server could not send at the offered rate)" if sent_fps < 0.98 * offered else ""
    print(f"  sustained {offered:,} frames/s: sent {sent_fps:,.0f}, committed {comm_fps:,.0f} -> "
          + ("MET" if comm_fps >= 0.98 * offered and abs(slope) < 0.01 * offered else "NOT MET" + short))
    print(f"  no queue growth: in-flight slope {slope:,.1f} frames/s -> "
          + ("MET" if abs(slope) < 0.01 * max(1.0, comm_fps) else "NOT MET"))
    print(f"  p99 recv-to-commit {p99:.0f} ms vs {TARGET_LIVE_P99_MS:.0f} -> "
          + ("MET" if p99 <= TARGET_LIVE_P99_MS else "NOT MET"))
    print(f"  total RSS {rss2:.0f} MiB vs {TARGET_LIVE_RSS_MB:.0f} -> "
          + ("MET" if rss2 <= TARGET_LIVE_RSS_MB else "NOT MET"))
    flat = all(abs(y - x) <= TARGET_DRIFT * x for x, y in ((rss1, rss2), (th1, th2), (fd1, fd2)) if x)
    print(f"  flat (RSS, threads, fds within 5% between t={minute1.t:.0f} s and the end) -> "
          + ("MET" if flat else "NOT MET"))
    if samples[-1].t < 300:
        print(f"  (a {samples[-1].t:.0f} s run; the target is 5 minutes: run with --live-seconds 300)")
    if args.live_retention_hours and db_sizes:
        at3 = min(db_sizes, key=lambda x: abs(x[0] - 180))
        last = db_sizes[-1]
        print(f"  database file at t={at3[0]:.0f} s / t={last[0]:.0f} s: {_mb(at3[1]):.0f} / {_mb(last[1]):.0f} MiB "
              f"({_drift(_mb(at3[1]), _mb(last[1]))}; retention {args.live_retention_hours} h"
              f"{', archive on' if args.live_archive else ''}) -> "
              + ("MET" if abs(last[1] - at3[1]) <= 0.10 * at3[1] else "NOT MET") + " (target: within 10 %)")
    for section in ("retention", "archive"):
        if storage_status and section in storage_status:
            print(f"  {section} (health dump, last seen): {json.dumps(storage_status[section])}")


def med_or_nan(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def min_(xs: Any) -> Any:
    v = [x for x in xs if x is not None]
    return min(v) if v else None


def max_(xs: Any) -> Any:
    v = [x for x in xs if x is not None]
    return max(v) if v else None


def _drift(x: float, y: float) -> str:
    return f"{(y - x) / x:+.1%}" if x else "n/a"


# ---------------------------------------------------------------------------------------------- profile


def summarize_pyspy(raw: Path, top: int = 15) -> str:
    """py-spy's raw (collapsed) stacks -> per process, the functions by self and inclusive share."""
    import collections
    import re

    per: dict[str, list[Any]] = {}
    strip = re.compile(r":\d+\)$")
    for line in raw.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        key = procs[-1][:70] if procs else "process"
        fr = [strip.sub(")", f) for f in frames if not f.startswith(("process ", "thread "))]
        p = per.setdefault(key, [0, collections.Counter(), collections.Counter()])
        p[0] += n
        if fr:
            p[1][fr[-1]] += n
            for f in set(fr):
                p[2][f] += n
    total = sum(p[0] for p in per.values()) or 1
    out = []
    for key, (tot, own, incl) in sorted(per.items(), key=lambda kv: -kv[1][0]):
        out.append(f"\n{key}: {tot} samples ({tot / total:.0%} of all samples)")
        out.append("  self:")
        out += [f"    {c / tot:6.1%}  {f}" for f, c in own.most_common(top)]
        out.append("  inclusive:")
        skip = ("Thread.", "<module>", "spawn_main", "_main ", "BaseProcess", " spawn_main", "Actor._actor_loop")
        out += [f"    {c / tot:6.1%}  {f}" for f, c in incl.most_common(top + 12) if not f.startswith(skip)][:top]
    return "\n".join(out)


def profile_part(args: argparse.Namespace) -> None:
    """py-spy over every process of one replay of the largest stream; only the time holding the GIL is
    sampled (--gil), so the shares are CPU work, not waiting. Outputs go to args.profile (not the repo)."""
    out_dir: Path = args.profile
    out_dir.mkdir(parents=True, exist_ok=True)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("profile: py-spy not found (pip install -e '.[bench]')")
        return
    n = max(args.symbols)
    stream = make_stream.ensure_stream(args.cache, n, args.frames, args.seed)
    raw = out_dir / f"replay_{n}sym_gil.txt"
    db = out_dir / "profile.db"
    for p in out_dir.glob("profile.db*"):
        p.unlink()
    cmd = [pyspy, "record", "--subprocesses", "--gil", "--rate", "250", "--format", "raw", "-o", str(raw), "--",
           *supervisor_cmd("--replay", str(stream), "--category", "linear", "--db", str(db), "--health-file",
                           str(out_dir / "health.json"),
                           "--log-level", "WARNING")]
    res = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=3600)
    if res.returncode != 0 or not raw.exists():
        print(f"profile: py-spy failed ({res.returncode}): {res.stderr.strip()[-500:]}")
        return
    summary = summarize_pyspy(raw)
    (out_dir / f"replay_{n}sym_gil.summary.txt").write_text(summary + "\n")
    print(f"\nProfile (py-spy --gil, {n} symbols, {args.frames:,} frames; raw stacks in {raw}):{summary}")


# ------------------------------------------------------------------------------------------------- main


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Recorder benchmark (issue #5); see bench/README.md.")
    ap.add_argument("--runs", type=int, default=3, help="runs per stream (default 3)")
    ap.add_argument("--frames", type=int, default=200_000, help="frames per stream (default 200000)")
    ap.add_argument("--symbols", type=_ints, default=[1, 20], help="streams to run, by symbols (default 1,20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=make_stream.DEFAULT_CACHE,
                    help=f"where generated streams are kept (default {make_stream.DEFAULT_CACHE})")
    ap.add_argument("--skip-cryptofeed", action="store_true")
    ap.add_argument("--no-check", action="store_true", help="skip the comparison with tests/reference.py")
    ap.add_argument("--check-symbols", type=_ints, default=[1, 20], help="streams to check (default 1,20)")
    ap.add_argument("--check-frames", type=int, default=20_000,
                    help="frames of each stream compared with the reference (0 = all; ~0.1 ms a frame)")
    ap.add_argument("--no-replay", action="store_true", help="only the live part")
    ap.add_argument("--live-symbols", type=int, default=0, help="run the live scale part with N symbols")
    ap.add_argument("--live-seconds", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="keep the live run's work directory")
    ap.add_argument("--live-retention-hours", type=float, default=0.0,
                    help="live: data_retention_hours (e.g. 0.05 = 3 minutes; cleanup every 10 s)")
    ap.add_argument("--live-archive", action="store_true", help="live: with a Parquet archive in the work dir")
    ap.add_argument("--live-env", action="append", default=[], metavar="L2REC_KEY=VALUE",
                    help="live: a setting for the recorder, as its environment variable (repeatable)")
    ap.add_argument("--live-profile", type=Path, metavar="DIR",
                    help="py-spy --subprocesses --gil over the recorder for 20 s mid-way through the live run, "
                         "into DIR")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="also profile one replay with py-spy (all processes, GIL-holding samples) into DIR")
    args = ap.parse_args(argv)
    print(MACHINE_NOTE)
    if not args.no_replay:
        replay_part(args)
    if args.profile:
        profile_part(args)
    if args.live_symbols:
        live_part(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
