"""Scripted faults of the fake Bybit server: what they are (``Fault``), when they fire (``FaultSchedule``) and
what they do to the frames (``feed_message``, ``extra_frame``). Scripted mode (scripted.py) applies them; the
connection faults' effect on the wire (drop, close, stall, ignored unsubscribes) is the writer's, there.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from websockets.frames import EXTERNAL_CLOSE_CODES

from .protocol import KIND_DELTA, KIND_INVALID, KIND_SNAPSHOT, TOPIC_RE, dumps, now_ms
from .synthetic import Msg, SyntheticBook

# Fault kinds, by what they act on.
FEED_FAULTS = frozenset({"u_jump", "u_restart"})  # the topic's shared book: every subscriber sees them
FRAME_FAULTS = frozenset({"stale", "crossed", "malformed", "oversized", "flood"})  # one extra frame, one subscription
CONN_FAULTS = frozenset({"drop", "close", "stall", "unsub_ignored"})  # the subscription's connection
FAULT_KINDS = FEED_FAULTS | FRAME_FAULTS | CONN_FAULTS
MALFORMED_VARIANTS: tuple[str, ...] = (
    "nan", "inf", "1e400", "1_000", "neg_size", "empty_symbol", "bad_type", "not_json",
)
UNSUB_MODES: tuple[str, ...] = ("silent", "ack")
_DEFAULT_ARG: dict[str, int | str] = {
    "u_jump": 5, "stale": 2, "malformed": "nan", "oversized": 32 * 2**20, "close": 1000,
    "unsub_ignored": "silent", "flood": 4 * 2**20 - 4096,
}
_MIN_OVERSIZED = 1024  # the JSON envelope (topic, type, ts) must fit; anything smaller is not "oversized"
STALE_HISTORY = 32  # regular frames remembered per subscription, for "stale" re-sends
CLOSE_REASON = "maintenance"
FLOOD_SYMBOL = "FLOODUSDT"  # nobody subscribes it: "flood" frames are of orderbook.<depth>.FLOODUSDT



@dataclass(frozen=True)
class Fault:
    """A scripted misbehaviour of the fake server.

    When: a fault fires once ``topic`` (any topic if None) has had ``after_frames`` data frames queued
    on a connection since the fault was armed (``inject()``), or -- for faults given to the constructor
    -- since the subscription started (topic given; a resubscribe restarts the count) or the connection
    opened (topic None). Faults are checked at the topic's push ticks, so none fires before the
    subscription's snapshot; with ``after_frames >= 1`` exactly ``after_frames`` data frames of the topic
    (of any topic if None) precede the fault's frame or event on that connection. ``once`` True: the
    fault fires one time in all; False: it stays armed and fires again after another ``after_frames``
    frames on the same subscription (connection), and on every other one; ``limit`` (``once`` False
    only) caps how many times it fires in all (None: no cap).

    What (``arg`` default in brackets):

    * ``u_jump`` [5]: the topic's book silently applies ``arg`` unsent deltas, so the next pushed frame
      has ``u == last + arg + 1``. Every subscriber of the topic gets that frame (the book is shared).
    * ``u_restart``: the book moves on once (unsent) and restarts its counter: every subscriber gets a
      snapshot with ``u == 1`` (``seq`` still rising), then deltas ``u == 2, 3, ...``.
    * ``stale`` [2]: one subscription gets again the regular frame sent ``arg`` pushes ago (2: its ``u``
      is the last ``u`` - 1; 1 is a plain duplicate). Waits until that many were sent.
    * ``crossed``: one extra frame claiming the next ``u`` and ``seq`` whose bid is one tick above the best
      ask; the book does not apply it. The next regular delta claims the same ``u``.
    * ``malformed`` [``"nan"``]: one extra frame of the topic, claiming the next ``u``, whose content is
      invalid: ``"nan"``, ``"inf"``, ``"1e400"``, ``"1_000"`` (a bid price), ``"neg_size"`` (size
      ``"-1"``), ``"empty_symbol"`` (``data.s == ""``), ``"bad_type"`` (``type == "update"``),
      ``"not_json"`` (``{"topic":"<topic>", garbage``). The other variants carry the best bid unchanged
      (level 1: a snapshot of best bid and ask), so the book misses nothing but that frame.
    * ``oversized`` [32 MiB]: one text frame of exactly ``arg`` bytes: a JSON object with the topic, type
      ``"delta"``, ts and a ``"pad"`` string. Recorded once handed to the socket even if the client
      refuses it mid-transfer.
    * ``flood`` [4 MiB - 4 KiB]: one text frame of exactly ``arg`` bytes of a topic no client subscribed
      (``orderbook.<depth of topic>.FLOODUSDT``, see ``flood_topic``): a well-formed delta whose ``data``
      holds a ``"pad"`` object of many small keys, so a client decodes all of it before it can tell the
      topic is not its own (~70 ms a 4 MiB frame with orjson). Recorded under that topic
      (``SentFrame.topic``), not the subscription's. With ``once=False`` and ``limit``, a paced flood of
      large frames beside the subscription's stream.
    * ``drop``: abort the connection (no close frame: the client sees 1006).
    * ``close`` [1000]: close handshake with code ``arg`` and reason ``"maintenance"``.
    * ``stall``: the connection stays open but nothing more is sent on it -- no data, no JSON pongs, no
      acks, no RFC 6455 pongs -- until the client closes it (its close frame is still answered).
    * ``unsub_ignored`` [``"silent"``]: from then on the connection ignores unsubscribe requests: no
      reply (``"silent"``) or a success ack (``"ack"``), and the topic keeps streaming either way. Each
      ignored request is an event record (``{"event":"unsub_ignored","arg":mode,"args":[...]}``).

    Recorded as: injected frames with ``SentFrame.fault == kind`` (u_jump/u_restart: the frame every
    subscriber got); drop/close/stall as an event record queued behind the frames before it, so its
    position among the connection's records is where it happened on the wire.
    """

    kind: str
    topic: str | None = None
    after_frames: int = 0
    arg: int | float | str | None = None
    once: bool = True
    limit: int | None = None

    def __post_init__(self) -> None:
        """Refuse a fault that could never fire as asked, at construction rather than mid-test."""
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if not isinstance(self.after_frames, int) or self.after_frames < 0:
            raise ValueError(f"after_frames must be an int >= 0, got {self.after_frames!r}")
        if self.topic is not None and TOPIC_RE.fullmatch(self.topic) is None:
            raise ValueError(f"not an orderbook topic: {self.topic!r}")
        arg = self.effective_arg
        if self.kind == "malformed" and arg not in MALFORMED_VARIANTS:
            raise ValueError(f"malformed arg must be one of {MALFORMED_VARIANTS}, got {arg!r}")
        if self.kind == "unsub_ignored" and arg not in UNSUB_MODES:
            raise ValueError(f"unsub_ignored arg must be one of {UNSUB_MODES}, got {arg!r}")
        if self.kind == "u_jump" and not (isinstance(arg, int) and arg >= 1):
            raise ValueError(f"u_jump arg must be an int >= 1 (update ids skipped), got {arg!r}")
        if self.kind == "stale" and not (isinstance(arg, int) and 1 <= arg <= STALE_HISTORY):
            raise ValueError(f"stale arg must be an int in 1..{STALE_HISTORY} (frames back), got {arg!r}")
        if self.kind in ("oversized", "flood") and not (isinstance(arg, int) and arg >= _MIN_OVERSIZED):
            raise ValueError(f"{self.kind} arg must be an int >= {_MIN_OVERSIZED} (bytes), got {arg!r}")
        if self.limit is not None and (self.once or not isinstance(self.limit, int) or self.limit < 1):
            raise ValueError(f"limit must be an int >= 1 and needs once=False, got {self.limit!r}")
        if self.kind == "close" and not (isinstance(arg, int) and (arg in EXTERNAL_CLOSE_CODES
                                                                   or 3000 <= arg <= 4999)):
            # 1004-1006 and 1015 must never be sent on the wire; websockets refuses them too.
            raise ValueError(f"close arg must be a sendable close code (1000-1003, 1007-1014, 3000-4999), "
                             f"got {arg!r}")
        if self.kind in ("u_restart", "crossed", "drop", "stall") and self.arg is not None:
            raise ValueError(f"{self.kind} takes no arg, got {self.arg!r}")

    @property
    def effective_arg(self) -> int | float | str | None:
        """``arg``, or the kind's default when None (u_jump 5, stale 2, malformed "nan", oversized 32 MiB,
        close 1000, unsub_ignored "silent", flood 4 MiB - 4 KiB)."""
        return self.arg if self.arg is not None else _DEFAULT_ARG.get(self.kind)

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """``"kind"`` or ``"kind:topic=T,after=N,arg=X,once=false,limit=N"`` (for the CLI's ``--fault``)."""
        kind, _, rest = spec.partition(":")
        kw: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"bad fault option {item!r} in {spec!r}")
            if key == "topic":
                kw["topic"] = value
            elif key == "after":
                kw["after_frames"] = int(value)
            elif key == "once":
                kw["once"] = value.lower() not in ("0", "false", "no")
            elif key == "limit":
                kw["limit"] = int(value)
            elif key == "arg":
                kw["arg"] = int(value) if re.fullmatch(r"\d+", value) else value
            else:
                raise ValueError(f"unknown fault option {key!r} in {spec!r}")
        return cls(kind.strip(), **kw)


# ------------------------------------------------------------------------------------------------- when


class Counted(Protocol):
    """A subscription as the schedule sees it: its topic and the frame counters of the armed faults
    (``Armed.key`` -> data frames queued since armed): its own, for faults of a topic, and its connection's,
    for topic-less faults (frames of any topic)."""

    @property
    def topic(self) -> str: ...

    @property
    def counts(self) -> dict[int, int]: ...

    @property
    def conn_counts(self) -> dict[int, int]: ...


@dataclass(eq=False, slots=True)
class Armed:
    """A fault waiting to fire; ``key`` indexes the per-subscription/connection frame counters."""

    fault: Fault
    key: int
    fired: int = 0
    done: bool = False


class FaultSchedule:
    """The armed faults, in arming order (checked in that order), and how many times each kind fired.

    Loop thread only, except ``fired`` and ``stats()``: read from any thread under ``lock``."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.armed: list[Armed] = []  # faults not yet spent
        self._keys = 0
        self.fired: dict[str, int] = dict.fromkeys(sorted(FAULT_KINDS), 0)  # under self.lock

    def arm(self, fault: Fault) -> None:
        """Arm ``fault``: counting starts now (frames queued before this do not count)."""
        self._keys += 1
        self.armed.append(Armed(fault, self._keys))

    def stats(self) -> dict[str, int]:
        """Firings per fault kind (every kind present). Any thread."""
        with self.lock:
            return dict(self.fired)

    def count(self, sub: Counted) -> None:
        """One data frame of ``sub`` was queued: count it for the armed faults (``after_frames``). Queue
        order is wire order, so "N frames queued before the fault" is "N frames sent before it"."""
        for armed in self.armed:
            topic = armed.fault.topic
            if topic is None:
                conn_counts = sub.conn_counts
                conn_counts[armed.key] = conn_counts.get(armed.key, 0) + 1
            elif topic == sub.topic:
                counts = sub.counts
                counts[armed.key] = counts.get(armed.key, 0) + 1

    def due(self, sub: Counted) -> list[Armed]:
        """The armed faults whose frame count on ``sub`` (or its connection) has been reached."""
        due = []
        for armed in self.armed:
            topic = armed.fault.topic
            if topic is None:
                n = sub.conn_counts.get(armed.key, 0)
            elif topic == sub.topic:
                n = sub.counts.get(armed.key, 0)
            else:
                continue
            if n >= armed.fault.after_frames:
                due.append(armed)
        return due

    def spend(self, armed: Armed, subs: Iterable[Counted]) -> None:
        """Count a firing; retire a once-fault (or a repeating one that reached its ``limit``), or restart
        the count of a repeating one on ``subs``."""
        armed.fired += 1
        with self.lock:
            self.fired[armed.fault.kind] += 1
        if armed.fault.once or (armed.fault.limit is not None and armed.fired >= armed.fault.limit):
            armed.done = True
            self.armed.remove(armed)
            return
        for sub in subs:
            counts = sub.conn_counts if armed.fault.topic is None else sub.counts
            counts[armed.key] = 0


# ------------------------------------------------------------------------------------------------- what


def feed_message(book: SyntheticBook, kind: str | None, arg: int | float | str | None, ts: int) -> Msg:
    """The message of a push of ``book``, with the feed fault ``kind`` (None: none) applied to the book."""
    if kind == "u_jump":
        assert isinstance(arg, int)
        book.skip(arg, ts)
        return book.next_message(ts)
    if kind == "u_restart":
        book.restart(ts)
        return book.snapshot(ts)
    return book.next_message(ts)


def next_claim(book: SyntheticBook) -> tuple[int, int]:
    """The (u, seq) an injected frame claims: those the next regular frame will carry, so the client
    cannot tell it apart by its counters alone."""
    return book.u + 1, book.seq + 1


def flood_topic(topic: str) -> str:
    """The topic of the "flood" frames a subscription of ``topic`` gets: same depth, a symbol nobody asked
    for."""
    return f"orderbook.{topic.split('.')[1]}.{FLOOD_SYMBOL}"


_flood_pads: dict[int, str] = {}  # room in bytes -> the "pad" object that fills it (built once per size)


def _flood_frame(topic: str, size: int, ts: int) -> str:
    """A well-formed delta of ``flood_topic(topic)`` of exactly ``size`` bytes: one bid level, and a
    ``"pad"`` object of small keys in ``data`` that a JSON decoder must build one by one (~70 ms a 4 MiB
    frame with orjson, ~20x what reading it costs) -- few ``[``, so no level-count check refuses it unread."""
    head = (f'{{"topic":"{flood_topic(topic)}","type":"delta","ts":{ts},"data":{{"s":"{FLOOD_SYMBOL}",'
            '"b":[["10000.00","1.000"]],"a":[],"u":1,"seq":1,"pad":{')
    tail = f'}}}},"cts":{ts}}}'
    room = size - len(head) - len(tail)
    pad = _flood_pads.get(room)
    if pad is None:
        key = 12  # len('"k0000000":0'), plus a comma between keys
        n = max(0, (room + 1) // (key + 1))
        pad = ",".join(f'"k{i:07d}":0' for i in range(n))
        pad += " " * (room - len(pad))  # JSON whitespace: exactly ``size`` bytes
        _flood_pads[room] = pad
    return head + pad + tail


def extra_frame(topic: str, book: SyntheticBook, history: Sequence[tuple[str, str]],
                fault: Fault) -> tuple[str, str] | None:
    """(text, kind) of the one frame a FRAME_FAULTS fault sends on a subscription of ``topic`` whose last
    regular frames are ``history``; None: not possible yet."""
    arg = fault.effective_arg
    ts = now_ms()
    if fault.kind == "stale":
        assert isinstance(arg, int)
        if len(history) < arg:
            return None  # not enough sent yet: try again at the next push
        return history[-arg]
    if fault.kind == "oversized":
        assert isinstance(arg, int)
        head = f'{{"topic":"{topic}","type":"delta","ts":{ts},"pad":"'
        tail = '"}'
        return head + "x" * (arg - len(head) - len(tail)) + tail, KIND_INVALID
    if fault.kind == "flood":
        assert isinstance(arg, int)
        return _flood_frame(topic, arg, ts), KIND_DELTA
    if fault.kind == "malformed" and arg == "not_json":
        return f'{{"topic":"{topic}", garbage', KIND_INVALID
    kind = KIND_SNAPSHOT if book.depth == 1 else KIND_DELTA
    best_bid, best_ask = book.top_levels()
    bid = book.crossing_bid() if fault.kind == "crossed" else best_bid
    # Level 1 is snapshot-only: a one-level-per-side snapshot. Deeper: a delta of one bid.
    asks = [best_ask] if book.depth == 1 else []
    u, seq = next_claim(book)
    msg = book.forge(kind, ts, [bid], asks, u=u, seq=seq)
    if fault.kind == "malformed":
        if arg in ("nan", "inf", "1e400", "1_000"):
            msg["data"]["b"][0][0] = arg
        elif arg == "neg_size":
            msg["data"]["b"][0][1] = "-1"
        elif arg == "empty_symbol":
            msg["data"]["s"] = ""
        elif arg == "bad_type":
            msg["type"] = "update"
            kind = KIND_INVALID
    return dumps(msg), kind
