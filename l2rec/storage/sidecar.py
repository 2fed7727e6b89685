"""Rows a shard could not hand to the writer before it had to stop (the database full or locked through
the whole shutdown deadline) are a loss the database must show, not only the log. The shard writes the
lost intervals to a small sidecar file next to the database; the writer's next start turns them into
``l2_gaps`` rows (reason ``lost_at_stop``) and removes the file.

One file per shard process (``{db}.lost.shard-{id}.{pid}.json``), written atomically, so no two
processes ever write the same file. For a PostgreSQL URL there is no file to put them beside: they go to
the working directory, as ``l2rec-pg-{digest}.lost.shard-...``, the digest of the URL without its password.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from l2rec.messages.writer import GapRecord
from l2rec.storage.dburl import local_base
from l2rec.storage.schema import COL

log = logging.getLogger("recorder.storage")

LOST_AT_STOP = "lost_at_stop"
_SYMBOL, _DEPTH, _CATEGORY = COL["symbol"], COL["depth"], COL["category"]
_U, _TS, _RECV = COL["sequence"], COL["exchange_timestamp"], COL["recv_time_ns"]


def lost_gaps(rows: Iterable[tuple[object, ...]]) -> list[GapRecord]:
    """One closed gap per topic, spanning its lost rows: from the first lost row's time (receive time,
    else exchange time) to the last's, with the first and last lost ``u``."""
    spans: dict[tuple[str, str, int], list[int]] = {}  # (category, symbol, depth) -> [first_u, last_u, t0, t1]
    for row in rows:
        key = (str(row[_CATEGORY]), str(row[_SYMBOL]), int(row[_DEPTH]))  # type: ignore[call-overload]  # an int column
        u = int(row[_U])  # type: ignore[call-overload]  # an int column
        recv, ts = row[_RECV], row[_TS]
        t = int(recv) if isinstance(recv, int) else int(ts) * 1_000_000  # type: ignore[call-overload]  # ts is an int column
        span = spans.get(key)
        if span is None:
            spans[key] = [u, u, t, t]
        else:
            span[0], span[1] = min(span[0], u), max(span[1], u)
            span[2], span[3] = min(span[2], t), max(span[3], t)
    return [GapRecord(cat, f"orderbook.{depth}.{sym}", sym, depth, first_u, last_u, LOST_AT_STOP, t0, t1)
            for (cat, sym, depth), (first_u, last_u, t0, t1) in sorted(spans.items())]


def write_sidecar(db_path: str, shard_id: int, gaps: list[GapRecord]) -> Path | None:
    """Record ``gaps`` next to the database for the writer's next start; None when there is nothing (or
    the file cannot be written: the loss is then in the log only, which the caller has done)."""
    if not gaps:
        return None
    path = Path(f"{local_base(db_path)}.lost.shard-{shard_id}.{os.getpid()}.json")
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps([[getattr(g, f) for f in GapRecord.__slots__] for g in gaps]))
        os.replace(tmp, path)
    except OSError as exc:  # e.g. the disk that filled the database is full: say so, once
        log.error("cannot write the lost-rows sidecar; the loss is in this log only", extra={"fields": {
            "path": str(path), "error": str(exc)}})
        return None
    return path


def read_sidecars(db_path: str) -> tuple[list[GapRecord], list[Path]]:
    """The gaps every sidecar of ``db_path`` holds, and the files (to remove once the gaps are committed).
    A file that cannot be read is left in place and logged."""
    gaps: list[GapRecord] = []
    files: list[Path] = []
    db = local_base(db_path)
    for path in sorted(db.parent.glob(f"{db.name}.lost.shard-*.json")):
        try:
            gaps += [GapRecord(*fields) for fields in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError) as exc:
            log.error("unreadable lost-rows sidecar left in place", extra={"fields": {
                "path": str(path), "error": str(exc)}})
            continue
        files.append(path)
    return gaps, files
