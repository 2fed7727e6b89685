"""Golden tests: every real Bybit recording in tests/data (see its PROVENANCE.md) goes through
``recorder.protocol.classify`` + ``recorder.bookkeeper.BookKeeper`` and is compared row by row with the
independent reference in tests/reference.py; then the facts about those recordings that users rely on."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from l2rec.book.keeper import BookKeeper
from l2rec.messages.book import BookUpdate, RejectedFrame
from l2rec.storage.schema import ROW_COLUMNS
from l2rec.storage.sqlite import Store
from l2rec.venue.protocol import BOOK, OTHER_TOPIC, REJECT, REPLY, Reply, classify
from tests.reference import RefRecorder, diff_row, float_book

DATA = Path(__file__).resolve().parent / "data"
NAUTILUS = DATA / "nautilus_trader__2024-12-01_XRPUSDT_ob500.data"
TICKVAULT = DATA / "tickvault__bybit_orderbook.jsonl"
FASTMM = DATA / "FastMM__raw_md_stream.jsonl"
TARDIS = DATA / "tardis-node__mappers.test.ts.bybit_v5_messages.jsonl"
RECV0 = 1_750_000_000_000_000_000
COUNTERS = ("frames", "rows", "stale", "in_gap", "gaps", "rejected", "resets", "orphan_deletes", "restated")


def read_lines(path: Path) -> list[bytes]:
    return [ln.strip() for ln in path.read_bytes().splitlines() if ln.strip()]


def tardis_groups() -> dict[str, list[bytes]]:
    """Tardis lines are ``{"_source_array": NAME, "message": MSG}``; linear and spot share topic names, so
    each source array is a stream of its own."""
    groups: dict[str, list[bytes]] = {}
    for ln in read_lines(TARDIS):
        wrapper = json.loads(ln)
        groups.setdefault(wrapper["_source_array"], []).append(json.dumps(wrapper["message"]).encode())
    return groups


TARDIS_LINEAR = "bybit:messagesV5@line7061"
TARDIS_SPOT = "bybit-spot:messagesV5@line8935"
TARDIS_OPTION = "bybit-options:messages@line7335"
STREAMS: dict[str, list[bytes]] = {
    "nautilus": read_lines(NAUTILUS),
    "tickvault": read_lines(TICKVAULT),
    "fastmm": read_lines(FASTMM),
    **{f"tardis:{name}": frames for name, frames in tardis_groups().items()},
}


@dataclass
class Step:
    raw: bytes
    kind: str
    obj: object
    row: tuple[object, ...] | None
    ref_kind: str
    ref_row: dict[str, object] | None
    levels: tuple[int, int] | None  # bids/asks the topic's book holds after the frame


@dataclass
class Replay:
    bk: BookKeeper
    ref: RefRecorder
    steps: list[Step]
    gap_records: list[object]
    resyncs: list[tuple[str, str]]
    resets: list[tuple[str, int | None]]

    def rows(self, topic: str | None = None) -> list[dict[str, object]]:
        return [dict(zip(ROW_COLUMNS, s.row, strict=True)) for s in self.steps
                if s.row is not None and (topic is None or s.obj.topic == topic)]  # type: ignore[attr-defined]


def replay(frames: list[bytes], *, category: str = "linear", data_source: str = "replay") -> Replay:
    clock = itertools.count(1)
    bk = BookKeeper(category=category, data_source=data_source, clock_ns=lambda: next(clock))
    ref = RefRecorder(category=category, data_source=data_source)
    steps = []
    gap_records: list[object] = []
    resyncs: list[tuple[str, str]] = []
    resets: list[tuple[str, int | None]] = []
    for i, raw in enumerate(frames):
        kind, obj = classify(raw, RECV0 + i)
        row = None
        levels = None
        if kind == BOOK:
            assert isinstance(obj, BookUpdate)
            row = bk.on_update(obj)
            book = bk.topics[obj.topic].book
            levels = (len(book.bids), len(book.asks))
        elif kind == REJECT:
            assert isinstance(obj, RejectedFrame)
            bk.on_reject(obj)
        ref_kind, ref_row = ref.feed(raw, RECV0 + i)
        steps.append(Step(raw, kind, obj, row, ref_kind, ref_row, levels))
        g, r, z = bk.take_events()
        gap_records += g
        resyncs += r
        resets += z
    return Replay(bk, ref, steps, gap_records, resyncs, resets)


def accounting_holds(stats: dict[str, object]) -> bool:
    return stats["frames"] == (stats["rows"] + stats["stale"] + stats["in_gap"]  # type: ignore[operator]
                               + stats["gaps"] + stats["rejected"] + stats["restated"]) and stats["unaccounted"] == 0


# ---------------------------------------------------------------------------------------------------------
# Row by row against the reference, every recording


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_rows_equal_the_reference(name: str):
    r = replay(STREAMS[name])
    n_rows = 0
    for i, s in enumerate(r.steps):
        where = f"{name} frame {i}: {s.raw[:100]!r}"
        assert s.kind == s.ref_kind, where
        assert (s.row is None) == (s.ref_row is None), where
        if s.row is not None:
            assert s.ref_row is not None
            n_rows += 1
            assert len(s.row) == len(ROW_COLUMNS), where
            assert diff_row(dict(zip(ROW_COLUMNS, s.row, strict=True)), s.ref_row) == [], where
    assert n_rows > 0
    assert n_rows == sum(t.rows for t in r.ref.topics.values())


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_books_and_counters_equal_the_reference(name: str):
    r = replay(STREAMS[name])
    stats = r.bk.snapshot_stats()
    assert set(stats) == set(r.ref.topics)
    for topic, t in r.ref.topics.items():
        assert {c: stats[topic][c] for c in COUNTERS} == {c: getattr(t, c) for c in COUNTERS}, topic
        assert stats[topic]["synced"] == t.in_sync
        assert stats[topic]["last_u"] == t.last_u
        book = r.bk.topics[topic].book
        assert book.bids == float_book(t.bids)
        assert book.asks == float_book(t.asks)
    assert [(g.topic, g.reason, g.recovered_ns is not None) for g in r.gap_records] == [  # type: ignore[attr-defined]
        (e.topic, e.reason, e.recovered) for e in r.ref.events]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_frame_is_accounted_for(name: str):
    """frames == rows + stale + in_gap + gaps + rejected + restated, per topic; and every frame has exactly
    one kind."""
    r = replay(STREAMS[name])
    for topic, stats in r.bk.snapshot_stats().items():
        assert accounting_holds(stats), (topic, stats)
    by_kind = {k: sum(1 for s in r.steps if s.kind == k) for k in (BOOK, REPLY, OTHER_TOPIC, REJECT)}
    assert sum(by_kind.values()) == len(STREAMS[name])
    assert by_kind[BOOK] == sum(st["frames"] for st in r.bk.snapshot_stats().values())  # no rejects here
    assert by_kind[REJECT] == 0


# ---------------------------------------------------------------------------------------------------------
# nautilus: Bybit's own ob500 daily dump


def test_nautilus_ob500_50_rows_500_levels_u_plus_one():
    r = replay(STREAMS["nautilus"])
    rows = r.rows()
    assert len(rows) == 50
    assert all(s.kind == BOOK for s in r.steps)
    assert [s.levels for s in r.steps] == [(500, 500)] * 50
    assert all(row["data_quality_score"] == 1.0 for row in rows)
    us = [row["sequence"] for row in rows]
    assert us[0] == 20254869 and us[-1] == 20254918
    assert all(b - a == 1 for a, b in itertools.pairwise(us))
    assert rows[-1]["bid_price_1"] == 1.9537 and rows[-1]["ask_price_1"] == 1.9538
    assert r.gap_records == [] and r.resyncs == [] and r.resets == []
    stats = r.bk.snapshot_stats()["orderbook.500.XRPUSDT"]
    assert stats["synced"] is True and stats["last_u"] == 20254918 and stats["orphan_deletes"] == 0


def test_nautilus_first_row():
    row = replay(STREAMS["nautilus"]).rows()[0]
    assert row["timestamp"] == "2024-12-01T00:00:00.691Z"
    assert row["exchange_timestamp"] == 1733011200691
    assert row["symbol"] == "XRPUSDT" and row["depth"] == 500 and row["category"] == "linear"
    assert row["data_source"] == "replay" and row["exchange"] == "bybit"
    assert row["recv_time_ns"] == RECV0
    assert row["bid_price_1"] == 1.9531 and row["bid_size_1"] == 6203.0
    assert row["bid_price_2"] == 1.953 and row["bid_price_10"] == 1.9522  # "1.9530" is 1.953


def test_timestamps_are_iso_utc_milliseconds_with_z():
    for name, frames in STREAMS.items():
        for row in replay(frames).rows():
            ts = row["exchange_timestamp"]
            assert isinstance(ts, int)
            text = row["timestamp"]
            assert isinstance(text, str) and len(text) == 24 and text.endswith("Z"), (name, text)
            assert text[10] == "T" and text[19] == "." and int(text[20:23]) == ts % 1000, (name, text)


def test_trailing_zero_spellings_are_one_level():
    """"1.9530" (as Bybit spells it) and "1.953" are the same level: an update and a delete by another
    spelling change that level, never add a second one."""
    snapshot = STREAMS["nautilus"][0]
    msg = json.loads(snapshot)
    assert msg["data"]["b"][1] == ["1.9530", "2409"]
    u = msg["data"]["u"]

    def delta(u: int, bids: list[list[str]]) -> bytes:
        return json.dumps({"topic": "orderbook.500.XRPUSDT", "type": "delta", "ts": msg["ts"] + 100,
                           "data": {"s": "XRPUSDT", "b": bids, "a": [], "u": u, "seq": 1}}).encode()

    r = replay([snapshot, delta(u + 1, [["1.953", "7"]]), delta(u + 2, [["1.95300", "0"]])])
    assert [s.levels for s in r.steps] == [(500, 500), (500, 500), (499, 500)]
    rows = r.rows()
    assert len(rows) == 3
    assert (rows[1]["bid_price_2"], rows[1]["bid_size_2"], rows[1]["bid_price_3"]) == (1.953, 7.0, 1.9529)
    assert (rows[2]["bid_price_2"], rows[2]["bid_size_2"]) == (1.9529, 680.0)
    assert 1.953 not in r.bk.topics["orderbook.500.XRPUSDT"].book.bids
    assert r.bk.snapshot_stats()["orderbook.500.XRPUSDT"]["orphan_deletes"] == 0


# ---------------------------------------------------------------------------------------------------------
# tickvault: live mainnet spot capture


def test_tickvault_ack_is_a_reply_and_nine_rows():
    r = replay(STREAMS["tickvault"])
    first = r.steps[0]
    assert first.kind == REPLY and first.row is None
    assert isinstance(first.obj, Reply)
    assert (first.obj.kind, first.obj.ok, first.obj.op, first.obj.req_id) == ("ack", True, "subscribe", None)
    rows = r.rows()
    assert len(rows) == 9
    assert all(row["data_quality_score"] == 1.0 for row in rows)  # 50 x 50
    assert [s.levels for s in r.steps[1:]] == [(50, 50)] * 9
    assert all(b["sequence"] - a["sequence"] == 1 for a, b in itertools.pairwise(rows))  # type: ignore[operator]
    assert r.gap_records == []


# ---------------------------------------------------------------------------------------------------------
# FastMM: testnet spot, ob50 + ob1 + trades + control frames on one socket


def test_fastmm_ob50_and_ob1_rows():
    r = replay(STREAMS["fastmm"])
    ob50 = r.rows("orderbook.50.BTCUSDT")
    ob1 = r.rows("orderbook.1.BTCUSDT")
    assert len(ob50) == 19
    # 14 ob1 snapshots; two repeat the u before them (the 3 s re-push of an unchanged book). One row per book
    # state (u, seq): the re-push of u 1980707 also repeats its seq, so it is no row (counted as restated);
    # that of u 1980705 came with a newer seq (seq is shared with ob50, which moved meanwhile), so it is one.
    assert len(ob1) == 13
    assert all(b["sequence"] - a["sequence"] == 1 for a, b in itertools.pairwise(ob50))  # type: ignore[operator]
    steps = [b["sequence"] - a["sequence"] for a, b in itertools.pairwise(ob1)]  # type: ignore[operator]
    assert set(steps) == {0, 1} and steps.count(0) == 1
    assert [(a["sequence"], a["cross_sequence"], b["cross_sequence"]) for a, b in itertools.pairwise(ob1)
            if a["sequence"] == b["sequence"]] == [(1980705, 2189232157, 2189232166)]
    restating = [json.loads(s.raw)["data"] for s in r.steps
                 if s.kind == BOOK and b"orderbook.1." in s.raw and s.row is None]
    assert [(d["u"], d["seq"]) for d in restating] == [(1980707, 2189232186)]
    assert r.gap_records == [] and r.resyncs == []
    stats = r.bk.snapshot_stats()
    assert stats["orderbook.1.BTCUSDT"]["restated"] == 1 and stats["orderbook.50.BTCUSDT"]["restated"] == 0
    # separate u counters: ob50 and ob1 each stepped on their own, neither saw the other as a gap
    assert stats["orderbook.50.BTCUSDT"]["last_u"] == 3734376
    assert stats["orderbook.1.BTCUSDT"]["last_u"] == 1980716
    assert all(st["synced"] and st["gaps"] == 0 and st["stale"] == 0 for st in stats.values())
    # the on-subscribe snapshot: ts is send time, cts the last engine change (1.85 s earlier)
    assert ob50[0]["exchange_timestamp"] - ob50[0]["match_timestamp"] > 1800  # type: ignore[operator]
    # ob1 rows hold one level per side: a thin book scores 1/N
    assert all(row["data_quality_score"] == 0.1 for row in ob1)


def test_fastmm_control_frames_and_other_topics():
    r = replay(STREAMS["fastmm"])
    replies = [s.obj for s in r.steps if s.kind == REPLY]
    assert all(isinstance(x, Reply) for x in replies)
    assert [(x.kind, x.ok, x.req_id) for x in replies] == [  # type: ignore[attr-defined]
        ("ack", True, "sub1"), ("pong", True, "p1"), ("error", False, None)]
    error = replies[2]
    assert isinstance(error, Reply)
    assert error.message == "Invalid symbol :[orderbook.50.NOSUCHSYM]"
    assert error.topic == "orderbook.50.NOSUCHSYM"
    others = [s.obj for s in r.steps if s.kind == OTHER_TOPIC]
    assert others == ["publicTrade.BTCUSDT"] * 7
    assert all(s.row is None for s in r.steps if s.kind != BOOK)
    assert set(r.bk.topics) == {"orderbook.50.BTCUSDT", "orderbook.1.BTCUSDT"}


# ---------------------------------------------------------------------------------------------------------
# tardis-node: short snapshot/delta pairs, linear, spot and option


def test_tardis_linear_pairs_and_the_stale_ob1_delta():
    r = replay(STREAMS[f"tardis:{TARDIS_LINEAR}"])
    rows = r.rows()
    assert [(x["depth"], x["symbol"], x["sequence"]) for x in rows] == [
        (1, "BTCUSDT", 7003305), (1, "BTCUSDT", 7003306), (50, "BTCPERP", 20683568), (50, "BTCPERP", 20683569)]
    assert all(x["match_timestamp"] is None for x in rows)  # no cts in 2023
    stale = [s for s in r.steps if s.kind == BOOK and s.obj.u == 1188472]  # type: ignore[attr-defined]
    assert len(stale) == 1 and stale[0].row is None
    stats = r.bk.snapshot_stats()["orderbook.1.BTCUSDT"]
    assert stats["stale"] == 1 and stats["synced"] is True and stats["last_u"] == 7003306
    book = r.bk.topics["orderbook.1.BTCUSDT"].book  # the stale delta was not applied
    assert book.bids == {28552.0: 0.012} and book.asks == {28552.1: 25.433}
    assert r.gap_records == []
    assert {s.obj for s in r.steps if s.kind == OTHER_TOPIC} == {
        "publicTrade.BTCUSD", "publicTrade.LTCUSDT", "tickers.BTCUSD", "tickers.BTCUSDU23", "tickers.BTCUSDT",
        "liquidation.GALAUSDT", "liquidation.XRPUSD", "allLiquidation.PIPPINUSDT"}


def test_tardis_spot_pairs():
    rows = replay(STREAMS[f"tardis:{TARDIS_SPOT}"]).rows()
    assert [(x["depth"], x["sequence"]) for x in rows] == [(1, 20404754), (1, 20404755), (50, 59438060),
                                                           (50, 59438061)]
    last = rows[-1]
    assert last["bid_price_1"] == 28162.57 and last["bid_price_2"] == 28161.04 and last["ask_price_1"] == 28162.58


def test_tardis_option_empty_snapshot_with_u_zero():
    r = replay(STREAMS[f"tardis:{TARDIS_OPTION}"], category="option")
    empty = r.rows("orderbook.25.BTC-30JUN23-45000-P")
    assert len(empty) == 1
    row = empty[0]
    assert row["sequence"] == 0 and row["cross_sequence"] is None
    assert row["data_quality_score"] == 0.0
    assert row["mid_price"] is None and row["bid_price_1"] is None and row["ask_price_1"] is None
    assert row["total_bid_volume_10"] == 0.0 and row["total_ask_volume_10"] == 0.0
    sol = r.rows("orderbook.25.SOL-28APR23-30-C")
    assert [x["sequence"] for x in sol] == [24641, 24642]
    assert sol[-1]["ask_price_1"] == 1.75 and sol[-1]["bid_price_1"] == 0.01
    assert r.gap_records == []


def test_ob50_snapshot_and_deltas_are_not_gaps_when_ob1_interleaves():
    """ob1 and ob50 keep separate u counters: replaying only the ob50 frames of FastMM gives the same ob50
    rows as replaying them interleaved with ob1."""
    only50 = [f for f in STREAMS["fastmm"] if b'"orderbook.50.BTCUSDT"' in f]
    alone = replay(only50).rows()
    mixed = replay(STREAMS["fastmm"]).rows("orderbook.50.BTCUSDT")
    strip = ("recv_time_ns",)
    assert [{k: v for k, v in x.items() if k not in strip} for x in alone] == [
        {k: v for k, v in x.items() if k not in strip} for x in mixed]



@pytest.mark.parametrize("name", sorted(STREAMS))
def test_replaying_a_recording_twice_adds_no_rows(name: str, tmp_path: Path):
    """architecture.md, Storage: "replaying the same frames adds nothing" (INSERT OR IGNORE on the natural
    key). The Tardis option frames carry no ``seq``, so their cross_sequence is NULL."""
    store = Store(str(tmp_path / "replay.db"), "l2_training_data_practical")
    try:
        first = store.write([s.row for s in replay(STREAMS[name]).steps if s.row is not None])
        second = store.write([s.row for s in replay(STREAMS[name]).steps if s.row is not None])
    finally:
        store.close()
    assert first == len(replay(STREAMS[name]).rows())
    assert second == 0
