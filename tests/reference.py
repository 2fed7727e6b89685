"""A slow, obviously-correct reference for the order-book rules and features of docs/architecture.md.

It shares no code with ``recorder/`` on purpose: frames are parsed with the stdlib ``json`` module, prices
and sizes are ``decimal.Decimal`` (so ``"1.9520"`` and ``"1.952"`` are one dict key), the whole book is
sorted again for every row, and every feature is computed from scratch in exact decimal arithmetic.
The tests compare the recorder's float rows against it with a tight relative tolerance.

Rules (architecture.md "Order book rules"), per topic:
- any snapshot replaces the book; ``u == 1`` after a higher ``u`` is a service restart (a reset, not a gap);
- a delta must have ``u == last_u + 1``; ``orderbook.1`` may repeat the same ``u``;
- a delta whose ``u`` jumps ahead is a gap: out of sync, no rows, until the next snapshot;
  a delta with ``u == 1`` (a restart that cannot be applied as a delta) is a gap as well;
- a delta whose ``u`` is below the last (or repeats it, other than on ``orderbook.1``) is stale: dropped;
- a delta before any snapshot is not applied (a gap); a crossed or locked book after a message is a gap;
- a frame of the topic that cannot be used (its topic readable, its content not) is a gap;
- while out of sync, frames of the topic are counted as inside the gap.
Where the architecture is silent the reference follows the recorder's documented conventions (and says so):
the stable gap reason names, and features that need both sides are ``None`` when a side is empty.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

N = 10  # feature levels (architecture: N = 10)
TABLE_LEVELS = 10  # bid_price_1..10 / ask_price_1..10 columns

# Stable gap reason names (stored in the gaps table).
U_JUMP = "u_jump"
NO_SNAPSHOT = "delta_before_snapshot"
CROSSED = "crossed_book"
REJECTED = "rejected_frame"
RESTART_DELTA = "restart_delta"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")  # [0-9] is ASCII only
_BOOK_TOPIC = re.compile(r"orderbook\.([0-9]+)\.([^.]+)")


def iso_ms(ts_ms: int) -> str:
    """Exchange ``ts`` (ms) as ISO-8601 UTC with milliseconds and ``Z``: ``2024-12-01T00:00:00.691Z``."""
    return (_EPOCH + timedelta(milliseconds=ts_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Frame:
    """A valid ``orderbook.{depth}.{symbol}`` message."""

    topic: str
    symbol: str
    depth: int
    snapshot: bool
    u: int
    seq: int | None
    ts: int
    cts: int | None
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]


class _Invalid(Exception):
    pass


def _no_constants(name: str) -> object:
    raise ValueError(f"JSON constant {name} is not JSON")


def _number(v: object, *, positive: bool) -> Decimal:
    if not isinstance(v, str) or not _PLAIN_DECIMAL.fullmatch(v):
        raise _Invalid
    d = Decimal(v)
    if math.isinf(float(d)) or (positive and d <= 0):  # it must survive the recorder's float
        raise _Invalid
    return d


def _levels(raw: object) -> tuple[tuple[Decimal, Decimal], ...]:
    if not isinstance(raw, list):
        raise _Invalid
    out = []
    for lvl in raw:
        if not isinstance(lvl, list) or len(lvl) < 2:
            raise _Invalid
        out.append((_number(lvl[0], positive=True), _number(lvl[1], positive=False)))
    return tuple(out)


def _int(v: object, *, optional: bool) -> int | None:
    if v is None and optional:
        return None
    if type(v) is not int:
        raise _Invalid
    return v


def read(raw: bytes | str) -> tuple[str, object]:
    """``("book", Frame)``, ``("reply", dict)``, ``("other_topic", topic)`` or ``("reject", topic or None)``.

    A reject names its topic when the topic is a readable order book topic, so its book can be resynced.
    """
    try:
        msg = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return "reject", None
    if not isinstance(msg, dict):
        return "reject", None
    if "topic" not in msg or msg["topic"] is None:
        return "reply", msg
    topic = msg["topic"]
    if not isinstance(topic, str):
        return "reject", None
    if not topic.startswith("orderbook."):
        return "other_topic", topic
    m = _BOOK_TOPIC.fullmatch(topic)
    if m is None:
        return "reject", None
    depth, symbol = int(m.group(1)), m.group(2)
    try:
        if msg.get("type") not in ("snapshot", "delta"):
            raise _Invalid
        data = msg.get("data")
        if not isinstance(data, dict) or data.get("s") != symbol:
            raise _Invalid
        u = _int(data.get("u"), optional=False)
        ts = _int(msg.get("ts"), optional=False)
        assert u is not None and ts is not None
        if u < 0 or ts < 0:
            raise _Invalid
        frame = Frame(topic, symbol, depth, msg["type"] == "snapshot", u,
                      _int(data.get("seq"), optional=True), ts, _int(msg.get("cts"), optional=True),
                      _levels(data.get("b")), _levels(data.get("a")))
    except _Invalid:
        return "reject", topic
    return "book", frame


@dataclass
class TopicRef:
    topic: str
    symbol: str
    depth: int
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    in_sync: bool = False
    last_u: int | None = None
    gap: str | None = None  # reason of the open gap
    frames: int = 0
    rows: int = 0
    stale: int = 0
    in_gap: int = 0
    gaps: int = 0
    rejected: int = 0
    resets: int = 0
    orphan_deletes: int = 0
    restated: int = 0
    written: tuple[int, int | None] | None = None  # (u, seq) of the last row: the book state it holds

    def best_bid(self) -> Decimal | None:
        return max(self.bids) if self.bids else None

    def best_ask(self) -> Decimal | None:
        return min(self.asks) if self.asks else None

    def crossed(self) -> bool:
        bb, ba = self.best_bid(), self.best_ask()
        return bb is not None and ba is not None and bb >= ba


@dataclass(frozen=True)
class GapEvent:
    """A topic lost sync (``recovered`` False) or regained it at a snapshot (``recovered`` True)."""

    topic: str
    reason: str
    last_u: int | None
    got_u: int | None
    recovered: bool


class RefRecorder:
    """Feeds raw frames; returns ``(kind, row dict or None)`` per frame."""

    def __init__(self, *, category: str, data_source: str, n: int = N) -> None:
        self.category = category
        self.data_source = data_source
        self.n = n
        self.topics: dict[str, TopicRef] = {}
        self.events: list[GapEvent] = []
        self.resets: list[tuple[str, int]] = []

    def _topic(self, topic: str, symbol: str, depth: int) -> TopicRef:
        if topic not in self.topics:
            self.topics[topic] = TopicRef(topic, symbol, depth)
        return self.topics[topic]

    def feed(self, raw: bytes | str, recv_ns: int | None = None) -> tuple[str, dict[str, object] | None]:
        kind, obj = read(raw)
        if kind == "book":
            assert isinstance(obj, Frame)
            return kind, self.on_frame(obj, recv_ns)
        if kind == "reject" and isinstance(obj, str):
            self.on_rejected(obj)
        return kind, None

    def _lose_sync(self, t: TopicRef, reason: str, last_u: int | None, got_u: int | None) -> None:
        t.in_sync = False
        t.bids, t.asks = {}, {}
        if t.gap is None:
            t.gap = reason
            self.events.append(GapEvent(t.topic, reason, last_u, got_u, recovered=False))

    def on_rejected(self, topic: str) -> None:
        m = _BOOK_TOPIC.fullmatch(topic)
        assert m is not None
        t = self._topic(topic, m.group(2), int(m.group(1)))
        t.frames += 1
        t.rejected += 1
        self._lose_sync(t, REJECTED, t.last_u, None)

    def on_frame(self, f: Frame, recv_ns: int | None) -> dict[str, object] | None:
        t = self._topic(f.topic, f.symbol, f.depth)
        t.frames += 1
        if f.snapshot:
            if f.u == 1 and t.last_u is not None and t.last_u > 1:
                t.resets += 1
                self.resets.append((t.topic, t.last_u))
            prev_u = t.last_u
            t.bids = {p: s for p, s in f.bids if s != 0}
            t.asks = {p: s for p, s in f.asks if s != 0}
            t.last_u = f.u
            if t.crossed():
                t.gaps += 1
                self._lose_sync(t, CROSSED, prev_u, f.u)
                return None
            if not t.in_sync:
                t.in_sync = True
                if t.gap is not None:
                    self.events.append(GapEvent(t.topic, t.gap, None, None, recovered=True))
                    t.gap = None
        else:
            if not t.in_sync:
                if t.gap is None:
                    t.gaps += 1
                    self._lose_sync(t, NO_SNAPSHOT, t.last_u, f.u)
                else:
                    t.in_gap += 1
                return None
            last = t.last_u
            assert last is not None
            if f.u == last + 1 or (f.depth == 1 and f.u == last):
                pass
            elif f.u == 1:
                t.gaps += 1
                self._lose_sync(t, RESTART_DELTA, last, f.u)
                return None
            elif f.u > last:
                t.gaps += 1
                self._lose_sync(t, U_JUMP, last, f.u)
                return None
            else:
                t.stale += 1
                return None
            for book, levels in ((t.bids, f.bids), (t.asks, f.asks)):
                for p, s in levels:
                    if s != 0:
                        book[p] = s
                    elif p in book:
                        del book[p]
                    else:
                        t.orphan_deletes += 1
            t.last_u = f.u
            if t.crossed():
                t.gaps += 1
                self._lose_sync(t, CROSSED, last, f.u)
                return None
        # One row per book state: the state is (u, seq); a frame repeating the last row's (a snapshot after
        # a reconnect, orderbook.1's 3 s re-push) updates the book as any other but writes nothing.
        if t.written == (f.u, f.seq):
            t.restated += 1
            return None
        t.written = (f.u, f.seq)
        t.rows += 1
        return features(t, f, n=self.n, category=self.category, data_source=self.data_source,
                        recv_ns=recv_ns)


def features(t: TopicRef, f: Frame, *, n: int, category: str, data_source: str,
             recv_ns: int | None) -> dict[str, object]:
    """The row's columns that the architecture defines, computed from the whole book, sorted anew."""
    bids = sorted(t.bids.items(), reverse=True)
    asks = sorted(t.asks.items())
    row: dict[str, object] = {"timestamp": iso_ms(f.ts), "symbol": f.symbol, "exchange": "bybit"}
    for side, levels in (("bid", bids), ("ask", asks)):
        for i in range(TABLE_LEVELS):
            p, s = levels[i] if i < len(levels) else (None, None)
            row[f"{side}_price_{i + 1}"] = p
            row[f"{side}_size_{i + 1}"] = s
    with localcontext() as ctx:
        ctx.prec = 80
        tbv = sum((s for _, s in bids[:n]), Decimal(0))
        tav = sum((s for _, s in asks[:n]), Decimal(0))
        mid = spread = spread_bps = micro = imbalance = None
        if bids and asks:  # convention (recorder/features.py): features needing both sides are None
            (b1, bs1), (a1, as1) = bids[0], asks[0]
            mid = (b1 + a1) / 2
            spread = a1 - b1
            spread_bps = spread / mid * 10_000
            micro = (b1 * as1 + a1 * bs1) / (bs1 + as1)
            imbalance = (tbv - tav) / (tbv + tav)
        quality = min(Decimal(1), Decimal(len(t.bids)) / n, Decimal(len(t.asks)) / n)
    row.update({
        "mid_price": mid, "spread": spread, "spread_bps": spread_bps, "microprice": micro,
        "total_bid_volume_10": tbv, "total_ask_volume_10": tav,
        "order_book_imbalance": imbalance, "data_quality_score": quality,
        "exchange_timestamp": f.ts, "sequence": f.u, "cross_sequence": f.seq, "match_timestamp": f.cts,
        "depth": f.depth, "recv_time_ns": recv_ns, "category": category, "data_source": data_source,
    })
    return row


# Float tolerance. The recorder computes in floats: relative 1e-12 is ~4,500 ulps, far above rounding and
# far below any real error. Differences of nearly equal numbers lose relative precision, so for them the
# absolute tolerance is scaled by the size of the operands.
REL_TOL = 1e-12


def _abs_scale(col: str, want: dict[str, object]) -> float:
    if col == "spread":
        return float(want["ask_price_1"])  # type: ignore[arg-type]
    if col == "spread_bps":
        return 10_000.0
    if col == "order_book_imbalance":
        return 1.0
    return 0.0


def diff_row(got: dict[str, object], want: dict[str, object]) -> list[str]:
    """Columns where the recorder's row differs from the reference row (empty when they agree)."""
    problems = []
    for col, w in want.items():
        if col not in got:
            problems.append(f"{col}: missing from the recorder's row")
            continue
        g = got[col]
        if w is None or g is None:
            if not (w is None and g is None):
                problems.append(f"{col}: got {g!r}, want {w!r}")
        elif isinstance(w, Decimal):
            ok = isinstance(g, float) and math.isclose(
                g, float(w), rel_tol=REL_TOL, abs_tol=REL_TOL * _abs_scale(col, want))
            if not ok:
                problems.append(f"{col}: got {g!r}, want {w} (~{float(w)!r})")
        elif type(g) is not type(w) or g != w:
            problems.append(f"{col}: got {g!r}, want {w!r}")
    return problems


def float_book(levels: dict[Decimal, Decimal]) -> dict[float, float]:
    """A reference side as the recorder keys it."""
    return {float(p): float(s) for p, s in levels.items()}


def expected_rows(records: Iterable[Any], *, cut_after_fault: str | None = None,
                  skip_fault: str | None = None) -> dict[tuple, dict[str, object]]:
    """Reference rows for the data frames a fake server sent (its ``records()``: conn_id, topic, fault,
    text), connection by connection, keyed by (symbol, sequence, exchange_timestamp). Frames a connection
    sent after ``cut_after_fault`` fired on it were never read by the recorder (it recycled that socket);
    frames of ``skip_fault`` (e.g. a flood of a topic nobody subscribed) make no row and are left out."""
    by_conn: dict[str, list[Any]] = {}
    for r in records:
        by_conn.setdefault(r.conn_id, []).append(r)
    want: dict[tuple, dict[str, object]] = {}
    written: dict[str, tuple[str, int, tuple[int, int | None] | None]] = {}  # topic -> symbol, depth, last row's state
    for conn_records in by_conn.values():
        ref = RefRecorder(category="linear", data_source="live_trading")
        # The recorder's books outlive a connection: a fresh snapshot that restates the state of the topic's
        # last row (the book did not move while it reconnected) is no row. The reference learns that state.
        for topic, (symbol, depth, state) in written.items():
            ref._topic(topic, symbol, depth).written = state
        for r in conn_records:
            if cut_after_fault is not None and r.fault == cut_after_fault:
                break
            if r.topic is None or (skip_fault is not None and r.fault == skip_fault):
                continue
            _kind, row = ref.feed(r.text)
            if row is not None:
                row.pop("recv_time_ns", None)
                want[(row["symbol"], row["sequence"], row["exchange_timestamp"])] = row
        written.update({t.topic: (t.symbol, t.depth, t.written) for t in ref.topics.values()})
    return want
