"""PostgreSQL beside SQLite (issue 14): replay rows/s into each, and the live scale part into PostgreSQL.

    pip install -e '.[bench,postgres]'
    python bench/postgres.py                          # replay: 1 and 20 symbols, 200,000 frames, 3 runs per sink
    python bench/postgres.py --no-replay --live-symbols 500 --live-seconds 300    # live into PostgreSQL

A throwaway server (tests/pg_server.py: initdb in a temporary directory; SERVER_SETTINGS below, fsync
and synchronous_commit on) runs on the same cores as the recorder; ``--pg-url`` uses a server of yours instead (a fresh
database per run is created with CREATE DATABASE). CPU is the recorder's processes (rusage of the reaped
tree) and, separately, the server's (the postmaster, its children alive and reaped). See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import make_stream  # noqa: E402
from bench import run as bench_run  # noqa: E402
from tests.helpers import TABLE, clean_env, count_rows, supervisor_cmd  # noqa: E402
from tests.pg_server import PgServer, server_cpu_s  # noqa: E402

# The throwaway server's settings beyond initdb's defaults: what any server taking 25,000 rows/s is given
# (the defaults checkpoint every 1 GB of WAL, ~40 s at that rate, and each checkpoint makes the next
# change of every page write the whole page again). Durability as by default: fsync and synchronous_commit
# on, so a commit the recorder acknowledges is on disk.
SERVER_SETTINGS = {"shared_buffers": "256MB", "max_wal_size": "8GB", "checkpoint_timeout": "15min"}


@dataclass
class Run:
    sink: str
    frames: int
    wall_s: float
    cpu_s: float  # the recorder's processes
    server_cpu_s: float
    rows: int
    exitcode: int


def pg_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()
        return int(row[0]) if row else -1


def replay_once(stream: Path, frames: int, db: str, data_dir: Path | None, work: Path) -> Run:
    """One ``python supervisor.py --replay`` into ``db`` (an SQLite path or a PostgreSQL URL)."""
    pg = db.startswith("postgresql://")
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    s0 = server_cpu_s(data_dir) if pg else 0.0
    t0 = time.perf_counter()
    with (work / "stderr.txt").open("wb") as err:
        code = subprocess.run(supervisor_cmd("--replay", str(stream), "--category", "linear", "--db", db,
                                             "--health-file", str(work / "health.json")),
                              cwd=ROOT, env=clean_env(), stdout=subprocess.DEVNULL, stderr=err).returncode
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = server_cpu_s(data_dir) - s0 if pg else 0.0
    rows = pg_count(db) if pg else (count_rows(Path(db)) or -1)
    if code != 0:
        print("  ! exit", code, (work / "stderr.txt").read_text(errors="replace")[-1500:], file=sys.stderr)
    return Run("postgres" if pg else "sqlite", frames, wall,
               (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), server, rows, code)


class Databases:
    """Fresh databases: SQLite files in a temporary directory, PostgreSQL databases on the server."""

    def __init__(self, pg_url: str | None) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="l2rec-pgbench-"))
        self.server: PgServer | None = None
        if pg_url is None:
            self.server = PgServer(fsync=True, settings=SERVER_SETTINGS).start()
            pg_url = self.server.url()
        self.pg_url = pg_url
        self.n = 0
        self.created: list[str] = []

    @property
    def data_dir(self) -> Path | None:
        return self.server.data if self.server is not None else None

    def fresh(self, sink: str) -> tuple[str, Path]:
        self.n += 1
        d = self.work / f"run-{self.n}"
        d.mkdir()
        if sink == "sqlite":
            return str(d / "replay.db"), d
        import psycopg

        name = f"l2bench_{os.getpid()}_{self.n}"
        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        base, _, _ = self.pg_url.rpartition("/")
        return f"{base}/{name}", d

    def close(self) -> None:
        import shutil

        if self.server is not None:
            self.server.close()
        else:  # a server of the user's: leave nothing behind
            import psycopg

            with psycopg.connect(self.pg_url, autocommit=True) as conn:
                for name in self.created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.work, ignore_errors=True)


def replay_part(args: argparse.Namespace, dbs: Databases) -> None:
    one = make_stream.ensure_one_frame(args.cache, args.seed)
    print(f"replay: {args.runs} run(s) per sink, interleaved; load average at start {os.getloadavg()[0]:.2f}")
    base: dict[str, float] = {}
    for sink in ("sqlite", "postgres"):
        walls = []
        for _ in range(args.runs):
            db, d = dbs.fresh(sink)
            walls.append(replay_once(one, 1, db, dbs.data_dir, d).wall_s)
        base[sink] = statistics.median(walls)
        print(f"  one-frame baseline into {sink}: {base[sink]:.3f} s (median)")
    table: list[list[str]] = []
    for n in args.symbols:
        stream = make_stream.ensure_stream(args.cache, n, args.frames, args.seed)
        runs: dict[str, list[Run]] = {"sqlite": [], "postgres": []}
        for i in range(args.runs):
            for sink in ("sqlite", "postgres"):
                db, d = dbs.fresh(sink)
                r = replay_once(stream, args.frames, db, dbs.data_dir, d)
                runs[sink].append(r)
                steady = r.rows / (r.wall_s - base[sink]) if r.wall_s > base[sink] else float("nan")
                print(f"  {n} symbol(s) run {i + 1} {sink:8s}: wall {r.wall_s:.2f} s -> {steady:,.0f} rows/s steady, "
                      f"recorder CPU {r.cpu_s:.2f} s, server CPU {r.server_cpu_s:.2f} s, rows {r.rows:,}, exit "
                      f"{r.exitcode}, load {os.getloadavg()[0]:.2f}", flush=True)
        for sink, rs in runs.items():
            fps = [r.rows / (r.wall_s - base[sink]) for r in rs if r.wall_s > base[sink]]
            table.append([f"{n}", sink, bench_run.med_range(fps),
                          f"{statistics.median(r.wall_s for r in rs):.2f}",
                          f"{statistics.median(1000 * r.cpu_s / r.frames for r in rs):.3f}",
                          f"{statistics.median(1000 * r.server_cpu_s / r.frames for r in rs):.3f}",
                          f"{statistics.median(1000 * (r.cpu_s + r.server_cpu_s) / r.frames for r in rs):.3f}",
                          "yes" if all(r.rows == r.frames and r.exitcode == 0 for r in rs) else "NO"])
    bench_run.print_table(
        f"Replay of {args.frames:,} frames, rows/s steady (wall minus a 1-frame replay into the same sink), "
        f"median [min-max] of {args.runs}; CPU s per 1k frames. {bench_run.MACHINE_NOTE}",
        ["symbols", "sink", "rows/s", "wall s", "CPU recorder", "CPU server", "CPU total", "every frame a row"],
        table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="PostgreSQL beside SQLite (issue 14); see bench/README.md.")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--frames", type=int, default=200_000)
    ap.add_argument("--symbols", type=bench_run._ints, default=[1, 20])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=make_stream.DEFAULT_CACHE)
    ap.add_argument("--pg-url", help="a server of yours (the user may CREATE DATABASE); default: a throwaway one")
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--live-symbols", type=int, default=0, help="the live part into PostgreSQL with N symbols")
    ap.add_argument("--live-seconds", type=float, default=300.0)
    args = ap.parse_args(argv)
    dbs = Databases(args.pg_url)
    try:
        if not args.no_replay:
            replay_part(args, dbs)
        if args.live_symbols:
            url, _ = dbs.fresh("postgres")
            live: dict[str, Any] = {"live_symbols": args.live_symbols, "live_seconds": args.live_seconds,
                                    "seed": args.seed, "keep": False, "live_retention_hours": 0.0,
                                    "live_archive": False, "live_profile": None, "pg_url": url,
                                    "pg_data_dir": dbs.data_dir}
            bench_run.live_part(argparse.Namespace(**live))
    finally:
        dbs.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
