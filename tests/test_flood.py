"""A flood of large frames (issue 11): the bytes between the socket and the parser are bounded (the reader
waits for byte credits, and TCP holds the sender back), a stop drains the backlog or says what it lost, and
the frames read together with an oversized frame's header are not lost with it.

Plain tests first (the credits and the reader loop, no threads), then end to end with the fake Bybit server,
whose ``Fault("flood")`` sends large frames of a topic nobody subscribed beside the subscribed stream.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest

from l2rec.actors.connection import ReaderEnd, _read_loop
from l2rec.messages.control import ReaderExited
from l2rec.messages.frames import RawFrames
from l2rec.venue.credits import ByteCredits
from l2rec.venue.ws_frames import OP_CLOSE, OP_PING, OP_TEXT, FrameParser, FrameTooLarge, ProtocolError
from tests.fakes.bybit_server import FakeBybit, Fault
from tests.fakes.faults import extra_frame, flood_topic
from tests.helpers import wait_for
from tests.recorder_process import RecorderProcess
from tests.reference import diff_row, expected_rows
from tests.test_ws_frames import frame

BTC = "orderbook.50.BTCUSDT"
ETH = "orderbook.50.ETHUSDT"
FLOOD = flood_topic(BTC)
MIB = 2**20
FLOOD_BYTES = int(3.9 * MIB)  # just under max_frame_bytes (4 MiB): every one is read and parsed


# ------------------------------------------------------------------------------------------ byte credits


def never() -> bool:
    return False


def test_credits_bound_the_bytes_told_and_not_yet_parsed():
    credits = ByteCredits(100)
    assert credits.take(60, 3, never) == 60
    assert credits.take(40, 1, never) == 40  # exactly full
    # Full: a reader whose parser is gone gives up at once instead of waiting for credit that never comes.
    assert credits.take(1, 1, never) is None
    assert credits.waits == 1
    credits.give_back(60, 3)
    assert credits.take(50, 2, never) == 50
    assert (credits.held_bytes, credits.peak_bytes, credits.in_flight) == (90, 100, 3)


def test_a_message_larger_than_the_window_takes_the_whole_window_once_it_is_free():
    credits = ByteCredits(100)
    assert credits.take(10, 1, never) == 10
    assert credits.take(500, 1, never) is None  # waits for the whole window: 10 bytes are still held
    credits.give_back(10, 1)
    assert credits.take(500, 1, never) == 100  # what the message carries and the parser gives back
    credits.give_back(100, 1)
    assert credits.held_bytes == 0 and credits.in_flight == 0


def test_closed_credits_refuse_at_once_and_the_ledger_counts_every_frame_not_parsed():
    credits = ByteCredits(1000)
    assert credits.take(10, 4, never) == 10  # 4 frames told to the parser...
    credits.give_back(10, 3)  # ...3 parsed; the parser stopped before the last
    credits.close()
    assert credits.take(1, 2, lambda: True) is None  # even with room: the connection gave up at a stop
    credits.drop(2)  # the reader counts what it read and could not hand over
    assert (credits.in_flight, credits.frames_dropped, credits.lost) == (1, 2, 3)


# ------------------------------------------------------------------- frames read with an oversized header


def test_frames_before_an_oversized_header_in_the_same_read_come_with_the_refusal():
    good = [frame(OP_TEXT, b'{"a":1}'), frame(OP_PING, b"p"), frame(OP_TEXT, b'{"b":2}')]
    data = b"".join(good) + frame(OP_TEXT, b"x" * 40_000)[:10]  # the big one's header only
    try:
        FrameParser(32_768).feed(data)
    except FrameTooLarge as exc:
        assert exc.frames == [(OP_TEXT, b'{"a":1}'), (OP_PING, b"p"), (OP_TEXT, b'{"b":2}')]
        assert "40000 bytes > max_frame_bytes 32768" in str(exc)
    else:
        raise AssertionError("not refused")


def test_frames_before_bad_framing_in_the_same_read_come_with_the_error():
    data = frame(OP_TEXT, b"ok") + bytes([0xC1, 0x00])  # then reserved bits set
    try:
        FrameParser(1024).feed(data)
    except ProtocolError as exc:
        assert exc.frames == [(OP_TEXT, b"ok")]
    else:
        raise AssertionError("not refused")


class Inbox:
    """Stands in for an actor's ref: what the reader thread tells it, in order."""

    def __init__(self, alive: bool = True) -> None:
        self.messages: list[object] = []
        self.alive = alive

    def tell(self, message: object) -> None:
        self.messages.append(message)

    def is_alive(self) -> bool:
        return self.alive


class SocketOnly:
    """The parts of websocket-client's ``WebSocket`` the reader uses, over a plain socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.connected = False
        self.pongs: list[bytes] = []

    def pong(self, payload: bytes) -> None:
        self.pongs.append(payload)

    def send_close(self) -> None:
        pass


def read_all(data: bytes, max_frame_bytes: int, credits: ByteCredits, parser: Inbox) -> tuple[Inbox, ReaderEnd]:
    """Run the connection's reader loop over ``data`` (one read: it is all there before the loop starts,
    then EOF), in this thread."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(data)
        theirs.shutdown(socket.SHUT_WR)
        owner, end = Inbox(), ReaderEnd()
        _read_loop(SocketOnly(ours), 7, parser, owner, max_frame_bytes, credits, end)  # type: ignore[arg-type]
    return owner, end


def test_the_reader_tells_the_parser_the_frames_read_with_an_oversized_header_then_recycles():
    texts = [b'{"topic":"orderbook.50.BTCUSDT","n":%d}' % i for i in range(3)]
    data = b"".join(frame(OP_TEXT, t) for t in texts) + frame(OP_PING, b"hi") + frame(OP_TEXT, b"y" * 70_000)[:10]
    credits, parser = ByteCredits(1 << 20), Inbox()
    owner, end = read_all(data, 65_536, credits, parser)
    (told,) = parser.messages
    assert isinstance(told, RawFrames) and [p for _, p in told.frames] == texts
    assert told.credit == sum(map(len, texts)) and credits.in_flight == 3
    (exited,) = owner.messages
    assert isinstance(exited, ReaderExited) and exited.reason.startswith("oversized frame refused: 70000 bytes")
    assert not end.complete  # the connection is recycled: what the server sent after it is not read


def test_a_reader_whose_parser_is_gone_counts_what_it_read_instead_of_waiting_forever():
    credits = ByteCredits(100)
    assert credits.take(100, 1, never) == 100  # the window is full: the parser holds a backlog...
    parser = Inbox(alive=False)  # ...and died with it
    data = frame(OP_TEXT, b'{"a":1}') + frame(OP_TEXT, b'{"b":2}') + frame(OP_CLOSE, b"\x03\xe8")
    owner, end = read_all(data, 1024, credits, parser)
    assert not end.complete  # the close frame behind them was never reached
    assert parser.messages == []
    assert (credits.frames_dropped, credits.lost) == (2, 3)
    (exited,) = owner.messages
    assert isinstance(exited, ReaderExited)
    assert exited.reason == "the parser is gone: 2 frames read were not handed over"


# ------------------------------------------------------------------------------------ the fake's flood


def test_the_fakes_flood_frame_is_exactly_its_size_and_of_a_topic_nobody_subscribed():
    text, kind = extra_frame(BTC, None, [], Fault("flood", topic=BTC, arg=FLOOD_BYTES))  # type: ignore[arg-type]
    assert len(text.encode()) == FLOOD_BYTES and kind == "delta"
    msg = orjson.loads(text)
    assert msg["topic"] == FLOOD == "orderbook.50.FLOODUSDT" and msg["data"]["s"] == "FLOODUSDT"
    assert text.count("[") < 10  # cheap to count, costly to decode: no level count refuses it unread
    assert Fault.parse(f"flood:topic={BTC},after=2,arg=5000,once=false,limit=3") == Fault(
        "flood", BTC, 2, 5000, once=False, limit=3)


@pytest.mark.parametrize("kw", [{"arg": 100}, {"limit": 3}, {"once": False, "limit": 0}])
def test_the_fakes_flood_refuses_what_could_never_fire_as_asked(kw: dict[str, Any]):
    with pytest.raises(ValueError):
        Fault("flood", topic=BTC, **kw)


# ------------------------------------------------------------------------------------------- end to end


def assert_rows_right(got: dict[tuple, dict[str, object]], want: dict[tuple, dict[str, object]]) -> None:
    """Every recorded row is the reference's row for the same frame (no wrong row, none invented)."""
    assert set(got) <= set(want), f"rows the reference does not make: {sorted(set(got) - set(want))[:5]}"
    for key, row in got.items():
        assert diff_row(row, want[key]) == [], (key, diff_row(row, want[key]))


def flood_server(*, after_frames: int, frames: int = 40, stream_frames: int = 200) -> FakeBybit:
    """BTCUSDT and ETHUSDT every 5 ms, ``stream_frames`` frames a subscription, and ``frames`` flood frames
    of FLOODUSDT (3.9 MiB each) on BTCUSDT's connection, one after every ``after_frames`` BTCUSDT frames."""
    flood = Fault("flood", topic=BTC, after_frames=after_frames, arg=FLOOD_BYTES, once=False, limit=frames)
    return FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=5, seed=21, max_frames_per_topic=stream_frames,
                     faults=[flood]).start()


def all_sent(srv: FakeBybit, stream_frames: int) -> bool:
    """The server sent every frame of both subscriptions (BTCUSDT's count includes the flood's)."""
    return srv.sent_count(BTC) + srv.sent_count(FLOOD) >= stream_frames and srv.sent_count(ETH) >= stream_frames


def test_a_flood_of_large_frames_of_another_topic_keeps_the_shard_small_and_every_row_right(tmp_path: Path):
    srv = flood_server(after_frames=1)
    rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT,ETHUSDT")
    try:
        wait_for(lambda: all_sent(srv, 200), 120, "the flood and the stream sent")
        want = expected_rows(srv.records(), skip_fault="flood")
        rec.wait_rows(len(want), timeout=120)
        assert rec.stop() == 0, rec.stderr_text()[-2000:]
    finally:
        rec.kill()
        srv.stop()
    assert srv.sent_count(FLOOD) == 40 and srv.total_connections == 1
    got = rec.rows_by_key()
    assert set(got) == set(want)
    assert_rows_right(got, want)
    dump = json.loads(rec.health_file.read_text())  # the final dump
    assert dump["actors"]["shard:0:parser"]["reject:unknown_topic"] == 40
    assert dump["actors"]["shard:0:parser"]["unaccounted"] == 0
    # ~156 MiB of flood went through; the shard's peak RSS stays far below that plus its own ~45 MiB
    peak = dump["actors"]["shard:0:features"]["process_peak_rss_bytes"]
    assert peak < 200 * MIB, f"shard peak RSS {peak / MIB:.0f} MiB"


def test_a_parser_that_stops_parsing_stops_the_reader_and_the_sender_not_the_memory(tmp_path: Path):
    # The parser hangs: nothing it was told is ever parsed. The reader may hold only the credit window
    # (4 x max_frame_bytes); after that it stops reading, and the server cannot send the rest.
    env = {"L2REC_FAULTS": "parser:hang_after=3", "L2REC_HEARTBEAT_TIMEOUT_S": "600",
           "L2REC_SHUTDOWN_DEADLINE_S": "1"}
    srv = flood_server(after_frames=1, stream_frames=400)
    rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT,ETHUSDT", env=env)
    try:
        wait_for(lambda: rec.log_events("shard started"), 60, "the shard")  # the root handles signals by now
        dump = wait_for(lambda: (d := rec.dump()) and d["actors"].get("shard:0:connection", {}).get(
            "credit_wait_s", 0) >= 2.0 and d, 60, "the reader waiting 2 s for the stuck parser")
        assert isinstance(dump, dict)
        conn = dump["actors"]["shard:0:connection"]
        assert conn["reader_waiting"] and conn["credit_held_bytes"] <= conn["credit_window_bytes"] == 16 * MIB
        assert conn["process_peak_rss_bytes"] < 120 * MIB, f"shard peak RSS {conn['process_peak_rss_bytes'] / MIB}"
        # TCP backpressure: the flood waits at the sender (~156 MiB queued there), not in the shard
        assert srv.stats()["flood"] == 40 and srv.sent_count(FLOOD) < 20
        code = rec.stop(timeout=90)
    finally:
        rec.kill()
        srv.stop()
    assert code == 1  # frames were read and never parsed: not a clean stop, and it says so
    lost = rec.log_events("frames lost at stop: read from the socket but never parsed")
    assert lost and lost[0]["level"] == "CRITICAL" and int(lost[0]["frames"]) > 0
    stuck = rec.log_events("actor did not finish its backlog at stop: what it held is lost")
    assert stuck and "parser" in str(stuck[0]["problem"])
    assert_rows_right(rec.rows_by_key(), expected_rows(srv.records(), skip_fault="flood"))  # what was stored is right


def test_a_book_actor_that_stops_applying_stops_the_reader_too(tmp_path: Path):
    # The book actor hangs while the parser goes on: the frames it was told keep their byte credits until
    # applied, so the reader stops once the window is full instead of the book actor's inbox growing
    # without bound (a shard behind its stream used to grow by GBs; bench/README.md, PostgreSQL live).
    env = {"L2REC_FAULTS": "features:hang_after=3", "L2REC_HEARTBEAT_TIMEOUT_S": "600",
           "L2REC_SHUTDOWN_DEADLINE_S": "1", "L2REC_MAX_FRAME_BYTES": str(64 * 1024)}
    with FakeBybit(symbols=["BTCUSDT"], interval_ms=1) as srv:
        rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT", "--depth", "200", env=env)
        try:
            wait_for(lambda: rec.log_events("shard started"), 60, "the shard")  # the root handles signals by now
            dump = wait_for(lambda: (d := rec.dump()) and d["actors"].get("shard:0:connection", {}).get(
                "credit_wait_s", 0) >= 1.0 and d, 60, "the reader waiting 1 s for the stuck book actor")
            assert isinstance(dump, dict)
            conn = dump["actors"]["shard:0:connection"]
            assert conn["reader_waiting"] and conn["credit_held_bytes"] <= conn["credit_window_bytes"] == 256 * 1024
            assert dump["actors"]["shard:0:parser"]["mailbox"] == 0  # the parser is not the one behind
            code = rec.stop(timeout=90)
        finally:
            rec.kill()
    assert code == 1  # frames were read and never made into rows: not a clean stop, and it says so
    lost = rec.log_events("frames lost at stop: read from the socket but never parsed")
    assert lost and int(lost[0]["frames"]) > 0


def test_sigterm_while_the_shard_works_through_a_backlog_stores_every_frame_sent(tmp_path: Path):
    # Pings every 0.1 s put pongs all along the backlog: each is a reply the parser tells the connection,
    # which stops first. The stop must still drain everything the server sent into rows, and exit 0.
    srv = flood_server(after_frames=2, stream_frames=300)
    rec = RecorderProcess(tmp_path, srv.url, "BTCUSDT,ETHUSDT", env={"L2REC_PING_INTERVAL_S": "0.1"})
    try:
        wait_for(lambda: all_sent(srv, 300), 120, "the flood and the stream sent")
        code = rec.stop(timeout=90)  # at once: the shard still holds (and the kernel buffers) a backlog
    finally:
        rec.kill()
        srv.stop()
    assert code == 0, rec.stderr_text()[-3000:]
    want, got = expected_rows(srv.records(), skip_fault="flood"), rec.rows_by_key()
    assert set(got) == set(want), f"missing rows: {len(set(want) - set(got))}"
    assert_rows_right(got, want)
    dump = json.loads(rec.health_file.read_text())
    assert dump["actors"]["shard:0:parser"]["reject:unknown_topic"] == 40
    assert dump["actors"]["shard:0:parser"]["reply:pong"] > 0
    assert not rec.log_events("frames lost at stop: read from the socket but never parsed")
