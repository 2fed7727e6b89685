"""Issue 13, the plain parts without processes: the shard's row publisher (batching, the switch, deep
levels), the host's delivery queue (bounded, drops counted, errors), rows to L2Update, records to errors."""

from __future__ import annotations

import logging
import threading

from l2rec.book.orderbook import OrderBook
from l2rec.book.rows import IsoMillis, make_row
from l2rec.embed.delivery import Delivery
from l2rec.embed.errors import CallbackError, ConnectionLost, GapDetected, WriterFailed, error_from_record
from l2rec.embed.updates import L2Update, update_from_row
from l2rec.messages.book import BookUpdate, RowsPublished
from l2rec.runtime.publish import RowPublisher


class Pipe:
    """Stands in for the uplink: keeps what was put."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def put(self, obj: object, block: bool = True, timeout: float | None = None) -> None:
        self.sent.append(obj)


class Switch:
    def __init__(self, value: int) -> None:
        self.value = value


def a_row(u: int, levels: int = 15) -> tuple[OrderBook, tuple[object, ...]]:
    book = OrderBook()
    bids = tuple((round(100.0 - i * 0.1, 1), 1.0 + i) for i in range(levels))
    asks = tuple((round(100.1 + i * 0.1, 1), 2.0 + i) for i in range(levels))
    book.replace(bids, asks)
    upd = BookUpdate("orderbook.50.BTCUSDT", "BTCUSDT", 50, True, u, 7 * u, 1_700_000_000_000 + u, None, 123, bids,
                     asks)
    return book, make_row(book, upd, category="linear", data_source="live_trading", n=10, iso=IsoMillis())


def test_publisher_batches_by_age_and_size_and_only_while_switched_on() -> None:
    pipe, switch = Pipe(), Switch(0)
    pub = RowPublisher(pipe, switch, 0, 10, hold_s=0.005, max_rows=3)  # type: ignore[arg-type]
    assert not pub.enabled
    switch.value = 1
    assert pub.enabled and not pub.deep
    rows = [a_row(u)[1] for u in range(1, 6)]
    pub.add(rows[:1], 10.000)
    pub.add(rows[1:2], 10.002)
    assert pipe.sent == []  # younger than hold_s, fewer than max_rows
    pub.flush_due(10.004)
    assert pipe.sent == []
    pub.flush_due(10.006)
    assert len(pipe.sent) == 1 and pipe.sent[0].rows == tuple(rows[:2])  # type: ignore[attr-defined]
    pub.add(rows[2:5], 11.0)  # max_rows at once
    assert len(pipe.sent) == 2 and pipe.sent[1].rows == tuple(rows[2:5])  # type: ignore[attr-defined]
    pub.flush()
    assert len(pipe.sent) == 2 and pub.status() == {"batches": 2, "rows": 5, "enabled": True}


def test_publisher_takes_deep_levels_from_the_book() -> None:
    pipe = Pipe()
    pub = RowPublisher(pipe, Switch(1), 3, 12)  # type: ignore[arg-type]
    book, row = a_row(1)
    pub.add_levels(book)
    pub.add([row], 0.0)
    pub.flush()
    (batch,) = pipe.sent
    assert isinstance(batch, RowsPublished) and batch.shard_id == 3 and batch.levels is not None
    update = update_from_row(row, 12, batch.levels[0])
    assert len(update.bids) == 12 and update.bids[0] == (100.0, 1.0) and update.asks[11] == (101.2, 13.0)


def test_update_from_row_is_the_rows_values() -> None:
    _, row = a_row(5, levels=4)
    u = update_from_row(row, 10)
    assert isinstance(u, L2Update)
    assert (u.symbol, u.sequence, u.cross_sequence, u.exchange_timestamp) == ("BTCUSDT", 5, 35, 1_700_000_000_005)
    assert u.timestamp.endswith("Z") and u.recv_time_ns == 123 and u.depth == 50 and u.category == "linear"
    assert u.bids == ((100.0, 1.0), (99.9, 2.0), (99.8, 3.0), (99.7, 4.0))  # NULL levels end the side
    assert u.mid_price == (100.0 + 100.1) / 2 and u.data_quality_score == 0.4
    assert update_from_row(row, 2).asks == ((100.1, 2.0), (100.2, 3.0))


def test_delivery_drops_what_does_not_fit_counts_it_and_keeps_order() -> None:
    delivery = Delivery(capacity=3, levels=10, name="t")
    got: list[int] = []
    gate = threading.Event()

    def on_update(u: L2Update) -> None:
        gate.wait(10)
        got.append(u.sequence)

    delivery.on_update = on_update
    rows = [a_row(u)[1] for u in range(1, 8)]
    delivery.offer(RowsPublished(0, tuple(rows[:2]), None, 0))  # queued before the thread runs
    delivery.offer(RowsPublished(0, tuple(rows[2:4]), None, 0))  # one fits, one dropped
    delivery.offer(RowsPublished(0, tuple(rows[4:5]), None, 0))  # full: dropped
    assert (delivery.dropped, delivery.offered) == (2, 5)
    delivery.start()
    gate.set()
    assert delivery.drain(10)
    assert got == [1, 2, 3] and delivery.delivered == 3
    delivery.on_update = None
    delivery.offer(RowsPublished(0, tuple(rows[5:]), None, 0))  # no callback: not queued, not dropped
    assert delivery.drain(10) and delivery.dropped == 2
    delivery.close()


def test_delivery_reports_a_raising_callback_and_goes_on() -> None:
    delivery = Delivery(capacity=100, levels=10, name="t")
    errors: list[Exception] = []
    seen: list[int] = []

    def on_update(u: L2Update) -> None:
        if u.sequence == 2:
            raise KeyError("oops")
        seen.append(u.sequence)

    delivery.on_update = on_update
    delivery.on_error = errors.append
    delivery.start()
    delivery.offer(RowsPublished(0, tuple(a_row(u)[1] for u in (1, 2, 3)), None, 0))
    delivery.error(ConnectionLost("gone"))
    assert delivery.drain(10)
    delivery.close()
    assert seen == [1, 3] and delivery.callback_errors == 1
    kinds = sorted(type(e).__name__ for e in errors)
    assert kinds == ["CallbackError", "ConnectionLost"]
    (cb,) = [e for e in errors if isinstance(e, CallbackError)]
    assert isinstance(cb.__cause__, KeyError) and cb.fields["sequence"] == 2


def record(name: str, level: int, msg: str, role: str, **fields: object) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    r.fields = fields
    r.role = role
    return r


def test_log_records_become_the_documented_errors() -> None:
    lost = error_from_record(record("actors.connection", logging.WARNING, "disconnected", "shard-0", reason="eof"))
    assert isinstance(lost, ConnectionLost) and "eof" in str(lost)
    failed = error_from_record(record("actors.connection", logging.WARNING, "reconnect scheduled", "shard-0",
                                      attempt=2, reason="connect ws://x: ConnectionRefusedError()"))
    assert isinstance(failed, ConnectionLost) and failed.fields["attempt"] == 2
    assert error_from_record(record("actors.connection", logging.WARNING, "reconnect scheduled", "shard-0",
                                    attempt=1, reason="eof")) is None  # its "disconnected" said it already
    gap = error_from_record(record("actors.features", logging.WARNING, "gap: topic out of sync", "shard-0",
                                   topic="orderbook.50.BTCUSDT", reason="u_jump"))
    assert isinstance(gap, GapDetected) and (gap.topic, gap.reason) == ("orderbook.50.BTCUSDT", "u_jump")
    assert isinstance(error_from_record(record("actors.writer", logging.WARNING, "database is locked", "writer")),
                      WriterFailed)
    assert isinstance(error_from_record(record("actors.processes", logging.CRITICAL, "cannot open the database",
                                               "writer")), WriterFailed)
    assert error_from_record(record("actors.features", logging.INFO, "update", "shard-0")) is None
