"""Property tests (hypothesis) of the pure recorder modules against tests/reference.py.

(a) after any valid snapshot + deltas (inserts, updates, deletes, orphan deletes, re-spelled prices) the
    recorder's OrderBook equals the reference book rebuilt from scratch;
(b) every emitted row equals a direct recomputation from the reference book;
(c) u-sequence rules: jumps, stale, repeats, u == 1, crossed books, rejected frames -> rows only while in
    sync, gaps with the right reasons, and the accounting identity;
(d) classify() never raises on arbitrary or mutated input, and bad numbers are 'bad_level' rejects that
    keep their topic (so the book is resynchronised).
"""

from __future__ import annotations

import itertools
import json
import math
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l2rec.book.keeper import (
    GAP_CROSSED,
    GAP_NO_SNAPSHOT,
    GAP_REJECTED,
    GAP_RESTART_DELTA,
    GAP_U_JUMP,
    BookKeeper,
)
from l2rec.book.rows import IsoMillis
from l2rec.messages.book import BookUpdate, RejectedFrame
from l2rec.storage.schema import ROW_COLUMNS
from l2rec.venue.protocol import BOOK, OTHER_TOPIC, R_BAD_LEVEL, REJECT, REPLY, Reply, classify
from tests.reference import RefRecorder, diff_row, float_book, iso_ms

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
DATA = Path(__file__).resolve().parent / "data"
SYMBOL = "XRPUSDT"
TICKS = (Decimal("0.0001"), Decimal("0.01"), Decimal("0.5"), Decimal("1"), Decimal("10"))
BID_KS = (1, 40)  # price = k * tick; bids and asks never overlap unless a test wants a crossed book
ASK_KS = (41, 80)
KINDS = {BOOK, REPLY, OTHER_TOPIC, REJECT}


def spell(d: Decimal, zeros: int) -> str:
    """A plain decimal string for ``d`` with ``zeros`` extra trailing zeros ("1.952" -> "1.95200")."""
    s = format(d.normalize(), "f")
    if zeros:
        s += ("" if "." in s else ".") + "0" * zeros
    return s


def frame(depth: int, kind: str, u: int, ts: int, bids: list[list[str]], asks: list[list[str]],
          seq: int | None = None) -> bytes:
    return json.dumps({"topic": f"orderbook.{depth}.{SYMBOL}", "type": kind, "ts": ts,
                       "data": {"s": SYMBOL, "b": bids, "a": asks, "u": u, "seq": seq},
                       "cts": ts - 7}).encode()


def new_pair(n: int = 10) -> tuple[BookKeeper, RefRecorder]:
    clock = itertools.count(1)
    return (BookKeeper(category="linear", data_source="replay", feature_levels=n, clock_ns=lambda: next(clock)),
            RefRecorder(category="linear", data_source="replay", n=n))


def feed(bk: BookKeeper, raw: bytes, recv_ns: int | None = None) -> tuple[str, object, tuple[object, ...] | None]:
    kind, obj = classify(raw, recv_ns)
    row = None
    if kind == BOOK:
        assert isinstance(obj, BookUpdate)
        row = bk.on_update(obj)
    elif kind == REJECT:
        assert isinstance(obj, RejectedFrame)
        bk.on_reject(obj)
    return kind, obj, row


def accounting_holds(stats: dict[str, object]) -> bool:
    return stats["frames"] == (stats["rows"] + stats["stale"] + stats["in_gap"]  # type: ignore[operator]
                               + stats["gaps"] + stats["rejected"] + stats["restated"]) and stats["unaccounted"] == 0


# ---------------------------------------------------------------------------------------------------------
# Strategies


sizes = st.one_of(
    st.just(Decimal(0)),
    st.builds(lambda k, d: Decimal(k).scaleb(-d), st.integers(1, 10**7), st.integers(0, 6)),
)
positive_sizes = st.builds(lambda k, d: Decimal(k).scaleb(-d), st.integers(1, 10**7), st.integers(0, 6))


def levels(tick: Decimal, ks: tuple[int, int], size_st: st.SearchStrategy[Decimal], *, unique: bool,
           max_size: int) -> st.SearchStrategy[list[list[str]]]:
    one = st.tuples(st.integers(*ks), size_st, st.integers(0, 3), st.integers(0, 3))
    raw = st.lists(one, max_size=max_size, unique_by=(lambda x: x[0]) if unique else None)
    return raw.map(lambda lv: [[spell(k * tick, zp), spell(s, zs)] for k, s, zp, zs in lv])


@st.composite
def valid_streams(draw: st.DrawFn, *, crossing: bool = False, resnapshots: bool = False) -> list[bytes]:
    """A snapshot then deltas with u + 1 each; with ``resnapshots`` some deltas are replaced by snapshots."""
    tick = draw(st.sampled_from(TICKS))
    depth = draw(st.sampled_from((1, 50, 200)))
    bid_ks, ask_ks = (BID_KS, ASK_KS) if not crossing else ((1, 60), (21, 80))
    u = draw(st.integers(0, 10**10))
    ts = draw(st.integers(1_600_000_000_000, 1_900_000_000_000))
    out = [frame(depth, "snapshot", u, ts,
                 draw(levels(tick, bid_ks, sizes, unique=True, max_size=25)),
                 draw(levels(tick, ask_ks, sizes, unique=True, max_size=25)), seq=u * 3)]
    for _ in range(draw(st.integers(0, 25))):
        u += 1
        ts += draw(st.integers(0, 2500))
        if resnapshots and draw(st.integers(0, 9)) == 0:
            out.append(frame(depth, "snapshot", u, ts,
                             draw(levels(tick, bid_ks, positive_sizes, unique=True, max_size=25)),
                             draw(levels(tick, ask_ks, positive_sizes, unique=True, max_size=25)), seq=u * 3))
        else:
            out.append(frame(depth, "delta", u, ts,
                             draw(levels(tick, bid_ks, sizes, unique=False, max_size=8)),
                             draw(levels(tick, ask_ks, sizes, unique=False, max_size=8)), seq=u * 3))
    return out


# ---------------------------------------------------------------------------------------------------------
# (a) the maintained book equals the reference book


@SETTINGS
@given(valid_streams())
def test_book_equals_reference_after_valid_messages(frames: list[bytes]):
    bk, ref = new_pair()
    for raw in frames:
        kind, upd, row = feed(bk, raw)
        ref_kind, ref_row = ref.feed(raw)
        assert kind == ref_kind == BOOK
        assert isinstance(upd, BookUpdate)
        st_, t = bk.topics[upd.topic], ref.topics[upd.topic]
        assert st_.book.bids == float_book(t.bids)
        assert st_.book.asks == float_book(t.asks)
        assert st_.book.bid_px == sorted(st_.book.bids)  # the sorted index agrees with the dict
        assert st_.book.ask_px == sorted(st_.book.asks)
        assert row is not None and ref_row is not None  # valid and never crossed: every message is a row
    (topic, stats), = bk.snapshot_stats().items()
    t = ref.topics[topic]
    assert stats["orphan_deletes"] == t.orphan_deletes
    assert stats["rows"] == len(frames) and stats["synced"] is True and stats["last_u"] == t.last_u


# ---------------------------------------------------------------------------------------------------------
# (b) every row equals a recomputation from the reference book


@SETTINGS
@given(valid_streams(crossing=True, resnapshots=True), st.integers(1, 10))
def test_rows_equal_recomputation_from_reference_book(frames: list[bytes], n: int):
    bk, ref = new_pair(n)
    for i, raw in enumerate(frames):
        _, _, row = feed(bk, raw, recv_ns=i)
        _, ref_row = ref.feed(raw, recv_ns=i)
        assert (row is None) == (ref_row is None), raw
        if row is not None:
            assert ref_row is not None
            assert diff_row(dict(zip(ROW_COLUMNS, row, strict=True)), ref_row) == [], raw


@SETTINGS
@given(st.lists(st.integers(0, 253_402_300_799_999), min_size=1, max_size=30).map(sorted)
       | st.lists(st.integers(1_700_000_000_000, 1_700_000_010_000), min_size=1, max_size=30))
def test_timestamp_is_iso_utc_milliseconds(tss: list[int]):
    iso = IsoMillis()  # one instance: its per-second cache must never leak into another second
    assert [iso(ts) for ts in tss] == [iso_ms(ts) for ts in tss]


# ---------------------------------------------------------------------------------------------------------
# (c) u-sequence rules

OPS = ("snapshot", "restart_snapshot", "restate", "next", "next", "next", "repeat", "jump", "stale", "delta_u1",
       "cross", "bad_level", "not_json")


@st.composite
def op_streams(draw: st.DrawFn) -> list[bytes]:
    """Interleaved ob1 and ob50 frames of one symbol with valid and broken u sequences."""
    tick = draw(st.sampled_from(TICKS))
    gen_u = {1: draw(st.integers(0, 10**6)), 50: draw(st.integers(0, 10**6))}
    ts = 1_733_011_200_000
    gen_seq = {1: ts, 50: ts}  # seq of the topic's last frame: "restate" repeats it with the same u
    out = []
    for _ in range(draw(st.integers(1, 40))):
        depth = draw(st.sampled_from((1, 50)))
        op = draw(st.sampled_from(OPS))
        last = gen_u[depth]
        u = {"snapshot": last + draw(st.integers(-2, 3)), "restart_snapshot": 1, "restate": last, "next": last + 1,
             "repeat": last, "jump": last + draw(st.integers(2, 1000)), "stale": last - draw(st.integers(1, 3)),
             "delta_u1": 1, "cross": last + 1, "bad_level": last + 1, "not_json": last}[op]
        u = max(u, 0)
        gen_u[depth] = u
        ts += draw(st.integers(1, 3000))
        kind = "snapshot" if op in ("snapshot", "restart_snapshot", "restate") else "delta"
        bids = draw(levels(tick, BID_KS, positive_sizes if kind == "snapshot" else sizes,
                           unique=kind == "snapshot", max_size=12))
        asks = draw(levels(tick, ASK_KS, positive_sizes if kind == "snapshot" else sizes,
                           unique=kind == "snapshot", max_size=12))
        if op == "cross":  # a bid at or above the asks' range: crossed or locked if the book has asks
            bids.append([spell(draw(st.integers(*ASK_KS)) * tick, 0), "1"])
        if op == "bad_level":
            bids.append([draw(st.sampled_from(("nan", "inf", "1e400", "1_000", "-1", ""))), "1"])
        # a restating snapshot: the same u and seq as the last frame (the book it carries may differ here,
        # which Bybit never does; the rules only look at u and seq)
        seq = gen_seq[depth] if op == "restate" else ts
        gen_seq[depth] = seq
        raw = frame(depth, kind, u, ts, bids, asks, seq=seq)
        out.append(raw[:-3] if op == "not_json" else raw)
    return out


GAP_REASONS = {GAP_U_JUMP, GAP_NO_SNAPSHOT, GAP_CROSSED, GAP_REJECTED, GAP_RESTART_DELTA}


@SETTINGS
@given(op_streams())
def test_u_sequence_rules(frames: list[bytes]):
    bk, ref = new_pair()
    applied_u: dict[str, int | None] = {}  # u of the last row of the topic since its last gap
    n_events = 0
    all_resets: list[tuple[str, int | None]] = []
    for i, raw in enumerate(frames):
        kind, obj, row = feed(bk, raw, recv_ns=i)
        ref_kind, ref_row = ref.feed(raw, recv_ns=i)
        assert kind == ref_kind, raw
        assert (row is None) == (ref_row is None), raw
        if row is not None:
            assert ref_row is not None
            assert diff_row(dict(zip(ROW_COLUMNS, row, strict=True)), ref_row) == [], raw
        gaps, resyncs, resets = bk.take_events()
        want = ref.events[n_events:]
        n_events = len(ref.events)
        assert [(g.topic, g.reason, g.recovered_ns is not None) for g in gaps] == [
            (e.topic, e.reason, e.recovered) for e in want], raw
        for g, e in zip(gaps, want, strict=True):
            assert g.reason in GAP_REASONS
            if e.reason in (GAP_U_JUMP, GAP_RESTART_DELTA) and not e.recovered:
                assert (g.last_u, g.got_u) == (e.last_u, e.got_u)
        opened = [(g.topic, g.reason) for g in gaps if g.recovered_ns is None]
        assert all(o in resyncs for o in opened)  # every lost topic asks for a fresh snapshot
        for topic, _ in opened:
            applied_u[topic] = None
        if row is not None:  # independent of the reference: a delta row continues the last row's u
            assert isinstance(obj, BookUpdate)
            prev = applied_u.get(obj.topic)
            if not obj.is_snapshot:
                assert prev is not None, raw
                assert obj.u - prev == 1 or (obj.depth == 1 and obj.u == prev), raw
            applied_u[obj.topic] = obj.u
        if resets:
            assert isinstance(obj, BookUpdate) and obj.is_snapshot and obj.u == 1
        all_resets += resets
    assert all_resets == ref.resets
    stats = bk.snapshot_stats()
    assert set(stats) == set(ref.topics)
    for topic, t in ref.topics.items():
        s = stats[topic]
        assert accounting_holds(s), (topic, s)
        assert (s["frames"], s["rows"], s["stale"], s["in_gap"], s["gaps"], s["rejected"], s["resets"],
                s["orphan_deletes"], s["restated"], s["synced"], s["last_u"]) == (
            t.frames, t.rows, t.stale, t.in_gap, t.gaps, t.rejected, t.resets, t.orphan_deletes, t.restated,
            t.in_sync, t.last_u), topic
        assert bk.topics[topic].book.bids == float_book(t.bids)
        assert bk.topics[topic].book.asks == float_book(t.asks)


def test_u_rules_by_example():
    """The rules spelled out once, so a failure of the property above has a readable twin."""
    snap = frame(50, "snapshot", 100, 1_000, [["1.0", "1"]], [["2.0", "1"]])

    def d(u: int) -> bytes:
        return frame(50, "delta", u, 1_000 + u, [["1.5", str(u)]], [])

    bk, _ = new_pair()
    results = [feed(bk, raw)[2] is not None for raw in (d(99), snap, d(101), d(101), d(100), d(103), d(104))]
    assert results == [False, True, True, False, False, False, False]
    gaps, resyncs, resets = bk.take_events()
    assert [(g.reason, g.last_u, g.got_u, g.recovered_ns is None) for g in gaps] == [
        (GAP_NO_SNAPSHOT, None, 99, True), (GAP_NO_SNAPSHOT, None, 99, False), (GAP_U_JUMP, 101, 103, True)]
    assert resyncs == [("orderbook.50.XRPUSDT", GAP_NO_SNAPSHOT), ("orderbook.50.XRPUSDT", GAP_U_JUMP)]
    stats = bk.snapshot_stats()["orderbook.50.XRPUSDT"]
    assert (stats["stale"], stats["gaps"], stats["in_gap"], stats["rows"]) == (2, 2, 1, 2)
    # u == 1 snapshot after a higher u: a reset, not a gap, and rows resume
    assert feed(bk, frame(50, "snapshot", 1, 9_000, [["1.0", "1"]], [["2.0", "1"]]))[2] is not None
    assert feed(bk, frame(50, "delta", 2, 9_001, [], [["2.0", "0"]]))[2] is not None
    gaps, resyncs, resets = bk.take_events()
    assert resets == [("orderbook.50.XRPUSDT", 101)]  # the last u applied before the restart
    assert [(g.reason, g.recovered_ns is None) for g in gaps] == [(GAP_U_JUMP, False)]  # the jump's gap closed
    assert accounting_holds(bk.snapshot_stats()["orderbook.50.XRPUSDT"])


# ---------------------------------------------------------------------------------------------------------
# (d) classify() on arbitrary and mutated input


def _real_frames() -> list[bytes]:
    out = []
    for path in sorted(DATA.iterdir()):
        if path.suffix not in (".jsonl", ".data"):
            continue
        for ln in path.read_bytes().splitlines():
            ln = ln.strip()
            if not ln:
                continue
            if path.name.startswith("tardis-node"):
                ln = json.dumps(json.loads(ln)["message"]).encode()
            out.append(ln)
    return out


REAL = _real_frames()
REAL_BOOK = [f for f in REAL if b'"orderbook.' in f and b'"topic"' in f]
REAL_WITH_LEVELS = [f for f in REAL_BOOK if json.loads(f)["data"]["b"] or json.loads(f)["data"]["a"]]


def check_classified(kind: str, obj: object) -> None:
    assert kind in KINDS
    if kind == BOOK:
        assert isinstance(obj, BookUpdate)
        assert obj.topic == f"orderbook.{obj.depth}.{obj.symbol}"
        assert obj.u >= 0 and obj.ts_ms >= 0
        for p, s in (*obj.bids, *obj.asks):
            assert math.isfinite(p) and p > 0.0
            assert math.isfinite(s) and s >= 0.0
    elif kind == REPLY:
        assert isinstance(obj, Reply)
    elif kind == OTHER_TOPIC:
        assert isinstance(obj, str)
    else:
        assert isinstance(obj, RejectedFrame)


@SETTINGS
@given(st.binary(max_size=400) | st.text(max_size=200))
def test_classify_never_raises_on_arbitrary_input(payload: bytes | str):
    check_classified(*classify(payload, 1))


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12) | st.sampled_from(("orderbook.50.XRPUSDT", "snapshot", "delta", "XRPUSDT", "1.5"))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(
    st.sampled_from(("topic", "type", "ts", "cts", "data", "s", "b", "a", "u", "seq", "op", "success",
                     "ret_msg", "req_id")) | st.text(max_size=5), c, max_size=6), max_leaves=25)


@SETTINGS
@given(json_values)
def test_classify_never_raises_on_arbitrary_json(value: object):
    check_classified(*classify(json.dumps(value), 1))


def mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    b = bytearray(data)
    for op, pos, val in ops:
        if not b:
            break
        i = pos % len(b)
        if op == 0:
            b[i] ^= val or 1
        elif op == 1:
            b.insert(i, val)
        else:
            del b[i:i + 1 + val % 8]
    return bytes(b)


mutations = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                     max_size=6)


@SETTINGS
@given(st.sampled_from(REAL), mutations)
def test_classify_never_raises_on_mutated_real_frames(raw: bytes, ops: list[tuple[int, int, int]]):
    check_classified(*classify(mutate(raw, ops), 1))


@SETTINGS
@given(st.integers(0, len(REAL) - 1), st.lists(st.tuples(st.booleans(), mutations), min_size=1, max_size=60))
def test_mutated_stream_never_crashes_the_bookkeeper_and_is_accounted(start: int, plan: list[tuple[bool, list]]):
    """A window of the real frames with some of them mutated: no exception anywhere, every book frame is
    accounted for, and no row comes from a crossed book."""
    bk, _ = new_pair()
    for raw, (do, ops) in zip(REAL[start:], plan, strict=False):
        kind, obj, row = feed(bk, mutate(raw, ops) if do else raw)
        check_classified(kind, obj)
        if row is not None:
            book = bk.topics[obj.topic].book  # type: ignore[attr-defined]
            assert not book.crossed()
        bk.take_events()
    for topic, stats in bk.snapshot_stats().items():
        assert accounting_holds(stats), (topic, stats)


BAD_NUMBERS = ("nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1e5", "1E5", "1_000", "-1", "-0", "-0.5", "",
               " 1", "1 ", "+1", "0x10", "1,5", "1.2.3", ".", "abc", "\u0661", "\uff11", "1" + "0" * 400,
               1.5, 2, None, True, [], {})
BAD_PRICES = (*BAD_NUMBERS, "0", "0.0", "0.000", "0." + "0" * 400 + "1")
BAD_LEVEL_SHAPES = (["1"], "1", None, [], 1.5, {"p": "1", "s": "1"})


@st.composite
def bad_level_frames(draw: st.DrawFn) -> tuple[bytes, str]:
    raw = draw(st.sampled_from(REAL_WITH_LEVELS))
    msg = json.loads(raw)
    sides = [k for k in ("b", "a") if msg["data"][k]]
    side = draw(st.sampled_from(sides))
    i = draw(st.integers(0, len(msg["data"][side]) - 1))
    what = draw(st.sampled_from(("price", "size", "level", "side")))
    if what == "price":
        msg["data"][side][i][0] = draw(st.sampled_from(BAD_PRICES))
    elif what == "size":
        msg["data"][side][i][1] = draw(st.sampled_from(BAD_NUMBERS))
    elif what == "level":
        msg["data"][side][i] = draw(st.sampled_from(BAD_LEVEL_SHAPES))
    else:
        msg["data"][side] = draw(st.sampled_from(("1", None, {}, 1)))
    return json.dumps(msg).encode(), msg["topic"]


def test_every_bad_number_is_rejected_as_bad_level_on_both_sides():
    """Exhaustive twin of the property below: each bad value as a price and as a size, bids and asks."""
    base = json.loads(REAL_WITH_LEVELS[0])
    topic = base["topic"]
    cases = [(side, 0, bad) for side in ("b", "a") for bad in BAD_PRICES]
    cases += [(side, 1, bad) for side in ("b", "a") for bad in BAD_NUMBERS]
    for side, field, bad in cases:
        msg = json.loads(json.dumps(base))
        msg["data"][side][-1][field] = bad
        assert classify(json.dumps(msg), 7) == (REJECT, RejectedFrame(R_BAD_LEVEL, topic, 7)), (side, field, bad)
    assert classify(json.dumps(base), 7)[0] == BOOK  # the unmodified frame is fine


@SETTINGS
@given(bad_level_frames())
def test_bad_numbers_are_bad_level_rejects_that_keep_the_topic(case: tuple[bytes, str]):
    raw, topic = case
    kind, obj = classify(raw, 42)
    assert kind == REJECT
    assert obj == RejectedFrame(R_BAD_LEVEL, topic, 42)


TICKVAULT = [ln.strip() for ln in (DATA / "tickvault__bybit_orderbook.jsonl").read_bytes().splitlines()]


@SETTINGS
@given(st.sampled_from(BAD_PRICES), st.integers(2, 9))
def test_a_bad_level_in_a_synced_topic_is_a_gap_until_the_next_snapshot(bad: object, at: int):
    """tickvault stream (ack, snapshot, 8 deltas) with one delta's price replaced by a bad value."""
    msg = json.loads(TICKVAULT[at])
    side = "b" if msg["data"]["b"] else "a"
    msg["data"][side][0][0] = bad
    frames = [*TICKVAULT[:at], json.dumps(msg).encode(), *TICKVAULT[at + 1:], TICKVAULT[1]]
    bk, _ = new_pair()
    rows = [feed(bk, raw)[2] is not None for raw in frames]
    # The resync's snapshot closes the gap; it makes a row unless it restates the last row's state (u, seq):
    # with the bad delta right after the snapshot (at 2), that row is the same snapshot's.
    assert rows == [False] + [True] * (at - 1) + [False] * (10 - at) + [at > 2]
    gaps, resyncs, _ = bk.take_events()
    topic = "orderbook.50.BTCUSDT"
    assert [(g.topic, g.reason, g.last_u, g.recovered_ns is None) for g in gaps] == [
        (topic, GAP_REJECTED, json.loads(TICKVAULT[at - 1])["data"]["u"], True),
        (topic, GAP_REJECTED, json.loads(TICKVAULT[at - 1])["data"]["u"], False)]
    assert resyncs == [(topic, GAP_REJECTED)]
    stats = bk.snapshot_stats()[topic]
    assert (stats["rejected"], stats["in_gap"], stats["synced"]) == (1, 9 - at, True)
    assert accounting_holds(stats)


def test_number_cache_stays_bounded_and_never_lets_a_bad_spelling_through() -> None:
    from l2rec.venue import protocol

    for i in range(protocol._CACHE_MAX + 500):
        kind, upd = classify(frame(50, "delta", i + 2, 1_700_000_000_000 + i, [[f"{i + 1}.5", f"{i}.25"]], []),
                             None)
        assert kind == BOOK and upd.bids == ((i + 1.5, i + 0.25),)  # type: ignore[union-attr]
        assert len(protocol._PRICES) <= protocol._CACHE_MAX and len(protocol._SIZES) <= protocol._CACHE_MAX
    # "1.5" is cached now; spellings of the same number that float() takes are still refused.
    for bad in ("1.5e0", " 1.5", "+1.5", "1_0.5", "nan", "inf", "0", "0.0"):
        kind, rej = classify(frame(50, "delta", 9, 1_700_000_000_000, [[bad, "1"]], []), None)
        assert kind == REJECT and rej.reason == R_BAD_LEVEL, bad  # type: ignore[union-attr]


def test_a_depth_with_a_leading_zero_is_not_a_book_topic():
    """Found by the mutation property: ``orderbook.00.X`` parsed as depth 0, whose topic reads back as
    ``orderbook.0.X``: two names for one book. Bybit sends neither."""
    real = next(f for f in REAL_WITH_LEVELS if b'"orderbook.500.' in f)
    raw = real.replace(b'"orderbook.500.', b'"orderbook.00.', 1)
    assert classify(real, 1)[0] == BOOK
    kind, obj = classify(raw, 1)
    assert kind == REJECT and isinstance(obj, RejectedFrame) and obj.reason == "bad_topic"
