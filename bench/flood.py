"""A flood of large frames of a topic nobody subscribed, beside a normal stream (issue 11), then SIGTERM.

    python bench/flood.py                      # 250 frames of 4 MiB - 4 KiB, ~10/s, SIGTERM 3 s after the stream
    python bench/flood.py --drain              # wait for every row instead: the whole flood's latency
    python bench/flood.py --every 1 --interval-ms 5 --term-when queued   # 20x faster; SIGTERM mid-backlog
    python bench/flood.py --every 1 --interval-ms 5 --hang-parser 3   # a parser that stops parsing

The fake Bybit server (scripted mode, in this process) streams ``orderbook.50`` of BTCUSDT and ETHUSDT every
``--interval-ms`` and, after every ``--every`` BTCUSDT frames, one ``Fault("flood")`` frame: a well-formed
delta of ``orderbook.50.FLOODUSDT`` of ``--frame-bytes`` bytes whose ``"pad"`` object costs the parser ~70 ms
to decode (far more than reading it). Each subscription stops after ``--stream-frames`` frames (flood frames
included). The recorder runs as a user runs it (``python supervisor.py --ws-url ...``). ``--term-when queued``
sends SIGTERM ``--term-after`` seconds after the server queued the last flood frame (while it still holds a
backlog), ``sent`` (default) after it sent everything. ``--hang-parser N`` makes the shard's parser hang at
its N-th message (``L2REC_FAULTS``): SIGTERM once the reader has waited 3 s for credit.

Printed: the shard's peak RSS (the kernel's VmHWM, polled, and the shard's own ``process_peak_rss_bytes`` in
the final health dump) and its RSS at SIGTERM; the writer's receive-to-commit p50/p99/max (its last 20,000
rows, from the final dump); how long rows waited before the reader read them (``recv_time_ns`` minus the
frame's ``ts``, p99: with backpressure the backlog waits in the server's and the kernel's buffers, where
receive-to-commit cannot see it); rows committed against the frames the server sent of the subscribed topics;
the reader's waits for byte credits; the exit code and the summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.run import hwm_bytes  # noqa: E402
from tests.fakes.bybit_server import FakeBybit, Fault  # noqa: E402
from tests.helpers import TABLE, query, wait_for  # noqa: E402
from tests.recorder_process import RecorderProcess  # noqa: E402

BTC = "orderbook.50.BTCUSDT"
ETH = "orderbook.50.ETHUSDT"
FLOOD = "orderbook.50.FLOODUSDT"  # tests/fakes/faults.py flood_topic(BTC)
MIB = 2**20


class ShardWatch:
    """Polls the shard process: peak RSS (VmHWM) and current RSS, until stopped or the shard is gone."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self.rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        proc = psutil.Process(self.pid)
        while not self._stop.wait(0.1):
            try:
                self.rss = proc.memory_info().rss
            except psutil.Error:
                return
            self.peak = max(self.peak, (hwm_bytes(self.pid) or 0), self.rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=250, help="flood frames (default 250)")
    p.add_argument("--frame-bytes", type=int, default=4 * MIB - 4096, help="bytes a flood frame (4 MiB - 4 KiB)")
    p.add_argument("--every", type=int, default=5, help="a flood frame after every N BTCUSDT frames (5)")
    p.add_argument("--interval-ms", type=float, default=20.0, help="push interval of the stream (20 ms)")
    p.add_argument("--stream-frames", type=int, default=1500, help="frames per subscription, flood included")
    p.add_argument("--term-after", type=float, default=3.0, help="SIGTERM this long after the server sent all")
    p.add_argument("--term-when", choices=("sent", "queued"), default="sent",
                   help="count --term-after from when the server sent everything (default) or queued the flood")
    p.add_argument("--drain", action="store_true", help="SIGTERM only once every row was committed")
    p.add_argument("--hang-parser", type=int, default=0, metavar="N", help="the parser hangs at its N-th message")
    p.add_argument("--keep", action="store_true", help="keep the work dir (database, log, health dump)")
    args = p.parse_args(argv)
    env = {"L2REC_FAULTS": f"parser:hang_after={args.hang_parser}", "L2REC_HEARTBEAT_TIMEOUT_S": "600",
           "L2REC_SHUTDOWN_DEADLINE_S": "2"} if args.hang_parser else {}

    flood = Fault("flood", topic=BTC, after_frames=args.every, arg=args.frame_bytes, once=False, limit=args.frames)
    srv = FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=args.interval_ms, seed=11,
                    max_frames_per_topic=args.stream_frames, faults=[flood])
    srv.start()
    work = Path(tempfile.mkdtemp(prefix="l2rec-flood-"))
    rec = RecorderProcess(work, srv.url, "BTCUSDT,ETHUSDT", env=env)
    print(f"flood: {args.frames} frames of {args.frame_bytes:,} bytes (one after every {args.every} BTCUSDT "
          f"frames at {args.interval_ms:g} ms), {args.stream_frames} frames a subscription; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; work dir {work}", flush=True)
    t0 = time.monotonic()
    watch: ShardWatch | None = None
    rss_at_term = 0
    try:
        wait_for(lambda: rec.log_events("shard started"), 60, "the shard")  # the root handles signals by now
        dump = wait_for(lambda: (d := rec.dump()) and "shard-0" in d.get("processes", {}) and d, 60, "the shard")
        assert isinstance(dump, dict)
        watch = ShardWatch(int(dump["processes"]["shard-0"]["pid"]))
        wait_for(lambda: srv.stats()["flood"] >= args.frames, 600, "every flood frame queued")
        t_queued = time.monotonic() - t0

        def all_sent() -> bool:
            return (srv.sent_count(BTC) + srv.sent_count(FLOOD) >= args.stream_frames
                    and srv.sent_count(ETH) >= args.stream_frames)
        if args.hang_parser:
            wait_for(lambda: float(rec.dump()["actors"].get("shard:0:connection", {}).get("credit_wait_s", 0)) >= 3,
                     120, "the reader waiting 3 s for credit")
        elif args.term_when == "sent" or args.drain:
            wait_for(all_sent, 600, "the server to send everything")
        t_sent = time.monotonic() - t0
        if args.drain:
            rec.wait_rows(srv.sent_count(BTC) + srv.sent_count(ETH), timeout=600)
        elif not args.hang_parser:
            time.sleep(args.term_after)  # the scenario of the issue: SIGTERM while a backlog waits
        rows_at_term = rec.row_count()
        flood_sent_at_term = srv.sent_count(FLOOD)
        rss_at_term = watch.rss
        t_term = time.monotonic() - t0
        code = rec.stop(timeout=300)
        want = srv.sent_count(BTC) + srv.sent_count(ETH)  # after the stop: what the server did send
    finally:
        if watch is not None:
            watch.stop()
        rec.kill()
        srv.stop()
    final = json.loads(rec.health_file.read_text()) if rec.health_file.exists() else {}
    actors = final.get("actors", {})
    writer = actors.get("writer:writer", {})
    r2c = writer.get("recv_to_commit_ms", {})
    conn = actors.get("shard:0:connection", {})
    parser = actors.get("shard:0:parser", {})
    dump_peak = max(int(a.get("process_peak_rss_bytes", 0)) for k, a in actors.items() if k.startswith("shard:0:"))
    rows = query(rec.db, f"SELECT recv_time_ns, exchange_timestamp FROM {TABLE}")
    waited = [r / 1e6 - ts for r, ts in rows if r is not None]
    summary = [r for r in rec.logs() if "summary" in str(r.get("event", ""))]
    lost = [r for r in rec.logs() if r.get("level") in ("ERROR", "CRITICAL")]
    assert watch is not None
    print(f"server: flood queued by {t_queued:.1f} s, waited until {t_sent:.1f} s; SIGTERM at {t_term:.1f} s with "
          f"{rows_at_term:,} rows committed and {flood_sent_at_term} of {args.frames} flood frames sent")
    print(f"shard-0 peak RSS: {watch.peak / MIB:.0f} MiB (VmHWM, polled), {dump_peak / MIB:.0f} MiB (final dump); "
          f"RSS at SIGTERM {rss_at_term / MIB:.0f} MiB")
    print(f"receive-to-commit (writer, {r2c.get('samples')} rows): p50 {r2c.get('p50')} ms, p99 {r2c.get('p99')} ms, "
          f"max {r2c.get('max')} ms")
    print(f"frame ts to read by the recorder: p50 {pct(waited, 0.5)} ms, p99 {pct(waited, 0.99)} ms, "
          f"max {max(waited, default=None)} ms")
    print(f"reader: waited for byte credits {conn.get('credit_waits')} times, {conn.get('credit_wait_s')} s; "
          f"parser: frames {parser.get('frames')}, reject:unknown_topic {parser.get('reject:unknown_topic')}")
    print(f"rows committed {len(rows):,} of {want:,} subscribed frames sent; exit code {code}; "
          f"shard stop took {time.monotonic() - t0 - t_term:.1f} s")
    for r in summary:
        print(f"  {r.get('level')}: {r.get('event')}")
    for r in lost[:10]:
        fields = {k: v for k, v in r.items() if k not in ("ts", "event", "level", "pid", "logger")}
        print(f"  {r.get('level')}: {r.get('event')} {fields}")
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if code == 0 and len(rows) == want else 1


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
