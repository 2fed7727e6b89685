"""Archive cost per row: one symbol-hour of N rows (every feature column filled) read from SQLite and
written to Parquet by an archive round, then written again (a round of the same rows recorded again: the
union with the file already there, deduplicated), read through the ADBC driver (the archive process) and
through Python's sqlite3 (the writer's final round). CPU seconds beside wall time.

    python bench/archive_cost.py [ROWS]        # default 180,000: one busy symbol-hour (50 rows/s)
"""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from l2rec.storage import schema  # noqa: E402
from l2rec.storage.archive_jobs import ArchiveRound, run_round  # noqa: E402
from l2rec.storage.retention import HOUR_MS  # noqa: E402
from l2rec.storage.sqlite import Store  # noqa: E402

T0 = 1_733_011_200_000  # 2024-12-01T00:00:00Z
TABLE = "l2_training_data_practical"
FEATURES = ("mid_price", "spread", "spread_bps", "microprice", "order_book_imbalance", "total_bid_volume_10",
            "total_ask_volume_10", "weighted_bid_price", "weighted_ask_price")


def rows(n: int) -> list[tuple[object, ...]]:
    rnd = random.Random(1)
    out = []
    for i in range(n):
        v: dict[str, object] = dict.fromkeys(schema.ROW_COLUMNS)
        v.update(timestamp="2024-12-01T00:00:00.000Z", symbol="BTCUSDT", exchange="bybit", sequence=i, update_id=i,
                 cross_sequence=i, sequence_id=i, exchange_timestamp=T0 + i * HOUR_MS // n, depth=50,
                 category="linear", data_source="replay", data_quality_score=1.0)
        for side in ("bid", "ask"):
            for lvl in range(1, 11):
                v[f"{side}_price_{lvl}"] = round(96000 + rnd.random() * 10, 1)
                v[f"{side}_size_{lvl}"] = round(rnd.random() * 3, 3)
        v.update({k: rnd.random() for k in FEATURES})
        out.append(tuple(v[c] for c in schema.ROW_COLUMNS))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 180_000
    work = Path(tempfile.mkdtemp(prefix="l2rec-archive-cost-"))
    try:
        db = str(work / "r.db")
        store = Store(db, TABLE)
        data = rows(n)
        for i in range(0, n, 20_000):
            store.write(data[i:i + 20_000])
        store.close()
        first = ArchiveRound(db, TABLE, str(work / "archive"), tuple(schema.NATURAL_KEY), 0, 0, T0 + HOUR_MS, n,
                             T0 + HOUR_MS)
        # the same rows again, as late rows (ids past the first round's): merged into the hour's file
        again = ArchiveRound(db, TABLE, str(work / "archive"), tuple(schema.NATURAL_KEY), T0 + HOUR_MS, 0,
                             T0 + HOUR_MS, n, T0 + HOUR_MS)
        # Both readers: ADBC (the archive process's) and Python's sqlite3 (the writer's final round, and
        # the fallback). The store is closed: no other connection of this process has the file open.
        for reader, arrow in (("adbc", True), ("sqlite3", False)):
            shutil.rmtree(work / "archive", ignore_errors=True)
            for label, job in (("first write", first), ("written again (union + dedupe)", again)):
                t, c = time.perf_counter(), time.process_time()
                done = run_round(job, arrow_reader=arrow)
                dt, dc = time.perf_counter() - t, time.process_time() - c
                (w,) = done.written
                print(f"{reader:>7}, {label}: {w.rows:,} rows in {dt:.2f} s = {dt / w.rows * 1e6:.1f} us/row wall, "
                      f"{dc / w.rows * 1e6:.1f} us/row CPU; file {w.bytes / 1e6:.1f} MB "
                      f"({w.bytes / w.rows_in_file:.0f} B/row){'' if not done.fallbacks else ' FELL BACK'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
