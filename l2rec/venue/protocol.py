"""Bybit v5 public websocket frames: classify, validate and convert, and build requests.

A frame is one of: an order book update (``BookUpdate``), a server reply (ack, pong, refusal), a frame of
another topic we do not record (``publicTrade``...), or a reject with a reason. Nothing here raises on bad
input: the caller counts the reason and goes on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import orjson

from l2rec.messages.book import BookUpdate, Level, RejectedFrame

INF = float("inf")
_TS_MAX_MS = 4_102_444_800_000  # 2100-01-01: a larger ts is garbage, not a time



class FrameKind(StrEnum):
    """What ``classify`` found; the parser's counters are keyed by these (and by reject reasons)."""

    BOOK = "book"
    REPLY = "reply"
    OTHER_TOPIC = "other_topic"
    REJECT = "reject"


class ReplyKind(StrEnum):
    """A server reply: an acknowledged request, a pong, or a refusal."""

    ACK = "ack"
    PONG = "pong"
    ERROR = "error"


# Module-level names: ``kind is BOOK`` on the hot path is one global lookup, not an attribute lookup too.
BOOK, REPLY, OTHER_TOPIC, REJECT = FrameKind.BOOK, FrameKind.REPLY, FrameKind.OTHER_TOPIC, FrameKind.REJECT

# Reject reasons (stable names: they appear in the health dump and in tests).
R_NOT_JSON = "not_json"
R_NOT_OBJECT = "not_object"
R_BAD_TOPIC = "bad_topic"
R_BAD_TYPE = "bad_type"
R_BAD_FIELDS = "bad_fields"
R_BAD_LEVEL = "bad_level"
R_SYMBOL = "bad_symbol"
R_UNKNOWN_SHAPE = "unknown_shape"
R_TOO_MANY_LEVELS = "too_many_levels"

# Levels a side may hold beyond the subscribed depth. Bybit keeps an ``orderbook.{depth}`` book at exactly
# ``depth`` levels a side after every delta: a level leaving the window is deleted in the same delta that
# pushes it out (bybit-v5.md, observed on every recording; the docs promise nothing). The books are checked
# after a whole delta, so the order of the changes inside it needs no margin; this one is insurance, since
# a false refusal costs a gap and a resync while a few extra deep levels cost nothing (the features read
# the top 10). The bound itself is what matters: it keeps a frame's cost proportional to the depth.
EXTRA_LEVELS = 100


def max_levels(depth: int) -> int:
    """The most levels a side of an ``orderbook.{depth}`` book may hold; one more is ``too_many_levels``.

    A snapshot may carry this many levels a side, a delta twice as many (it may delete every level of the
    window and insert as many new ones), and the book after a delta this many again.
    """
    return depth + EXTRA_LEVELS


# A frame larger than this is counted before it is decoded: decoding a 3.7 MB frame of 235k levels takes
# ~0.15 s of CPU, counting its brackets ~3 ms. Any valid frame is counted as within bounds; the largest
# valid ones (a depth-1000 delta replacing its whole window) are ~130 KB, a depth-1000 snapshot ~40 KB.
_SCAN_BYTES = 64 * 1024
_TOPIC_B = re.compile(rb'"topic"\s*:\s*"(orderbook\.([0-9]{1,9})\.[A-Za-z0-9\-_]+)"')
_TOPIC_S = re.compile(r'"topic"\s*:\s*"(orderbook\.([0-9]{1,9})\.[A-Za-z0-9\-_]+)"')

_new_update = BookUpdate._make

_TOPIC_IN_TEXT = re.compile(r"(orderbook\.\d+\.[A-Za-z0-9\-_]+)")


@dataclass(frozen=True, slots=True)
class Reply:
    """An ack, pong or refusal from the server."""

    kind: ReplyKind
    ok: bool
    op: str | None
    req_id: str | None
    message: str

    @property
    def topic(self) -> str | None:
        """The topic a refusal names, when it names one (``Invalid symbol :[orderbook.50.X]``)."""
        m = _TOPIC_IN_TEXT.search(self.message)
        return m.group(1) if m else None


class _Bad(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


# Validated number strings -> their floats. Prices near the touch repeat in almost every delta, and sizes
# often do: a hit skips the checks and float() (2.5 -> 1.5 us a frame on the bench stream). Emptied when
# full, so memory stays bounded (~3 MiB each) and the cache follows the market.
_PRICES: dict[str, float] = {}
_SIZES: dict[str, float] = {}
_CACHE_MAX = 20_000


def parse_levels(raw: object) -> tuple[Level, ...]:
    """``[["price","size"], ...]`` -> ``((price, size), ...)`` floats; raises ``_Bad`` on any bad level.

    Only plain non-negative decimals pass: ``float()`` alone would also take "nan", "inf", "1e5",
    "1_000", " 1", "+1" and non-ASCII digits. Inlined (no helper calls): it runs for every level.
    """
    if raw.__class__ is not list:
        raise _Bad(R_BAD_LEVEL)
    out: list[Level] = []
    append = out.append
    prices = _PRICES
    sizes = _SIZES
    try:
        for lvl in raw:
            p = lvl[0]
            s = lvl[1]
            fp = prices.get(p)
            if fp is None:
                if not (p.isascii() and p.replace(".", "", 1).isdigit()):
                    raise _Bad(R_BAD_LEVEL)
                fp = float(p)
                if not 0.0 < fp < INF:
                    raise _Bad(R_BAD_LEVEL)
                if len(prices) >= _CACHE_MAX:
                    prices.clear()
                prices[p] = fp
            fs = sizes.get(s)
            if fs is None:
                if not (s.isascii() and s.replace(".", "", 1).isdigit()):
                    raise _Bad(R_BAD_LEVEL)
                fs = float(s)
                if not fs < INF:
                    raise _Bad(R_BAD_LEVEL)
                if len(sizes) >= _CACHE_MAX:
                    sizes.clear()
                sizes[s] = fs
            append((fp, fs))
    except (TypeError, AttributeError, IndexError, KeyError):  # not a list of [str, str]
        raise _Bad(R_BAD_LEVEL) from None
    return tuple(out)


def split_topic(topic: str) -> tuple[int, str] | None:
    """``orderbook.50.BTCUSDT`` -> ``(50, "BTCUSDT")``; None for any other topic."""
    parts = topic.split(".")
    if len(parts) != 3 or parts[0] != "orderbook" or not parts[1].isdigit() or not parts[1].isascii():
        return None
    if parts[1][0] == "0":  # "orderbook.00.X" or depth 0: not a topic Bybit sends, and its topic would not
        return None         # read back as f"orderbook.{depth}.{symbol}"
    if not parts[2]:
        return None
    return int(parts[1]), parts[2]


def _int_field(v: object) -> int:
    if v.__class__ is int:
        return v
    raise _Bad(R_BAD_FIELDS)


def _too_many_levels_undecoded(payload: str | bytes, recv_ns: int | None) -> RejectedFrame | None:
    """A large frame with more levels than its topic's depth allows, found without decoding it.

    Each level is one ``[``: a valid frame holds at most the levels of a delta on both sides plus the two
    side arrays. Only the topic is looked for (the first ``"topic"`` key); without one, or within bounds,
    the frame is decoded and checked as usual.
    """
    if isinstance(payload, bytes):
        m = _TOPIC_B.search(payload)
        if m is None:
            return None
        topic, depth, brackets = m.group(1).decode(), int(m.group(2)), payload.count(b"[")
    else:
        ms = _TOPIC_S.search(payload)
        if ms is None:
            return None
        topic, depth, brackets = ms.group(1), int(ms.group(2)), payload.count("[")
    if brackets <= 4 * max_levels(depth) + 2:
        return None
    return RejectedFrame(R_TOO_MANY_LEVELS, topic, recv_ns)


def classify(payload: str | bytes, recv_ns: int | None) -> tuple[FrameKind, object]:
    """Classify and convert one frame.

    Returns ``(BOOK, BookUpdate)``, ``(REPLY, Reply)``, ``(OTHER_TOPIC, topic)`` or
    ``(REJECT, RejectedFrame)``. A reject carries the topic when the frame's topic was readable, so the
    caller can resynchronise that book. A frame with more levels a side than its depth allows
    (``max_levels``) is ``too_many_levels``; a large one is refused before it is decoded.
    """
    if len(payload) > _SCAN_BYTES:
        oversized = _too_many_levels_undecoded(payload, recv_ns)
        if oversized is not None:
            return REJECT, oversized
    try:
        msg = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return REJECT, RejectedFrame(R_NOT_JSON, None, recv_ns)
    if msg.__class__ is not dict:
        return REJECT, RejectedFrame(R_NOT_OBJECT, None, recv_ns)
    topic = msg.get("topic")
    if topic is None:
        return _reply(msg, recv_ns)
    if topic.__class__ is not str:
        return REJECT, RejectedFrame(R_BAD_TOPIC, None, recv_ns)
    if not topic.startswith("orderbook."):
        return OTHER_TOPIC, topic
    parsed = split_topic(topic)
    if parsed is None:
        return REJECT, RejectedFrame(R_BAD_TOPIC, None, recv_ns)
    depth, symbol = parsed
    try:
        kind = msg.get("type")
        if kind == "snapshot":
            is_snapshot = True
        elif kind == "delta":
            is_snapshot = False
        else:
            raise _Bad(R_BAD_TYPE)
        data = msg.get("data")
        if data.__class__ is not dict:
            raise _Bad(R_BAD_FIELDS)
        if data.get("s") != symbol:
            raise _Bad(R_SYMBOL)
        u = _int_field(data.get("u"))
        seq = data.get("seq")
        if seq is not None:
            seq = _int_field(seq)
        ts = _int_field(msg.get("ts"))
        cts = msg.get("cts")
        if cts is not None:
            cts = _int_field(cts)
        if u < 0 or not 0 < ts < _TS_MAX_MS:
            raise _Bad(R_BAD_FIELDS)
        raw_bids = data.get("b")
        raw_asks = data.get("a")
        # Counted before any level is parsed: a side's size bounds the work of the frame and of its book.
        cap = depth + EXTRA_LEVELS if is_snapshot else 2 * (depth + EXTRA_LEVELS)  # max_levels(), inlined
        if (raw_bids.__class__ is list and len(raw_bids) > cap) or (
                raw_asks.__class__ is list and len(raw_asks) > cap):
            raise _Bad(R_TOO_MANY_LEVELS)
        bids = parse_levels(raw_bids)
        asks = parse_levels(raw_asks)
    except _Bad as bad:
        return REJECT, RejectedFrame(bad.reason, topic, recv_ns)
    return BOOK, _new_update((topic, symbol, depth, is_snapshot, u, seq, ts, cts, recv_ns, bids, asks))


def _reply(msg: dict[str, object], recv_ns: int | None) -> tuple[FrameKind, object]:
    op = msg.get("op")
    ret_msg = msg.get("ret_msg")
    success = msg.get("success")
    req_id = msg.get("req_id")
    rid = req_id if isinstance(req_id, str) and req_id else None
    text = ret_msg if isinstance(ret_msg, str) else ""
    if text == "pong" or op == "pong":
        return REPLY, Reply(ReplyKind.PONG, True, "ping", rid, text)
    if isinstance(success, bool):
        return REPLY, Reply(ReplyKind.ACK if success else ReplyKind.ERROR, success, op if isinstance(op, str) else None,
                            rid, text)
    return REJECT, RejectedFrame(R_UNKNOWN_SHAPE, None, recv_ns)


def subscribe_requests(op: str, topics: Iterable[str], batch_args: int, req_prefix: str) -> Iterator[
        tuple[str, bytes]]:
    """``(req_id, json)`` requests of at most ``batch_args`` topics (spot refuses more than 10)."""
    items = list(topics)
    for n, i in enumerate(range(0, len(items), batch_args)):
        req_id = f"{req_prefix}-{op}-{n}"
        yield req_id, orjson.dumps({"req_id": req_id, "op": op, "args": items[i:i + batch_args]})


# Bybit: "For one public connection, the total length of args must not exceed 21,000 characters".
MAX_ARGS_CHARS = 21_000


def args_chars(topics: Iterable[str]) -> int:
    """How many characters ``topics`` count against ``MAX_ARGS_CHARS`` on one connection.

    Bybit does not say how it counts, so this takes the largest plausible reading: the compact JSON array
    of every topic of the connection, as if sent in one request (``["orderbook.50.A","orderbook.50.B"]``:
    each topic plus its two quotes, a comma between topics, two brackets). Any smaller reading (the topics
    alone, or joined by commas) is then under the limit too.
    """
    return len(orjson.dumps(list(topics)))  # compact; topics are ASCII, so bytes are characters


def ping_request(req_id: str) -> bytes:
    return orjson.dumps({"req_id": req_id, "op": "ping"})
