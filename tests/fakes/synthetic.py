"""A deterministic synthetic Bybit v5 order book stream, for tests and the fake server.

``SyntheticBook`` keeps a "full" book a little deeper than the subscribed depth and publishes only the
top ``depth`` levels per side, the way Bybit's ``orderbook.{depth}`` topics do: a level pushed out of
the window by an insert above it is sent as a delete (size ``"0"``), a level pulled into the window by a
delete above it is sent as an insert. Every delta is the exact difference between the published window
before and after, so replaying snapshot + deltas always reproduces ``bids()`` / ``asks()``.

Prices and sizes are integers internally (ticks and lots) so that no float rounding can ever create two
spellings of one level or a crossed book; they become decimal strings only on the way out.

Calibration (roughly, on the real captures in /work/shared/data/bybit): mostly size updates near the top,
with inserts and deletes at the window edge and inside it, 1-10 levels per delta, and the best price
moving now and then. ``u`` steps +1 per delta; a snapshot carries the current ``u`` (the version of the
book it shows), like Bybit's on-subscribe snapshot.
"""

from __future__ import annotations

import random
from bisect import insort
from decimal import Decimal
from typing import Any

# Bybit's current linear/spot depths; orderbook.1 has been snapshot-only since 2025-03-20.
VALID_DEPTHS: tuple[int, ...] = (1, 50, 200, 1000)

# Event weights per mutation. Size updates dominate on real books (nautilus ob500: 2,930 updates vs 18
# inserts and 18 deletes in 49 deltas); the thinner FastMM ob50 shows relatively more inserts/deletes.
_W_UPDATE = 0.82
_W_INSERT = 0.06
_W_DELETE = 0.06
# The rest (0.06) moves the best price: improve inside the spread, withdraw the best, or sweep levels.

_MAX_SPREAD_TICKS = 12  # beyond this the generator pulls a side back in, so the spread stays realistic
_MAX_GAP_TICKS = 6  # largest gap between consecutive levels created deep in the book

Msg = dict[str, Any]


def _tick_units(tick: float) -> tuple[int, int]:
    """``tick`` -> (integer price units per tick, decimals), e.g. 0.1 -> (1, 1), 0.5 -> (5, 1), 10 -> (10, 0)."""
    d = Decimal(repr(float(tick))).normalize()
    if d <= 0:
        raise ValueError(f"tick must be positive, got {tick!r}")
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)  # normalize() of a finite number never gives 'n'/'N'/'F'
    decimals = max(0, -exponent)
    return int(d.scaleb(decimals)), decimals


def _fmt_fixed(units: int, decimals: int) -> str:
    """Integer ``units`` of 10**-decimals as a plain decimal string with exactly ``decimals`` decimals."""
    if decimals == 0:
        return str(units)
    scale = 10**decimals
    return f"{units // scale}.{units % scale:0{decimals}d}"


class SyntheticBook:
    """A seeded, reproducible order book for one ``orderbook.{depth}.{symbol}`` topic.

    The same ``(symbol, depth, seed, mid, tick)`` always yields the same sequence of book states: the
    book only evolves in ``delta()`` / ``next_message()``, and timestamps come from the caller plus a
    separate random stream, so taking snapshots in between never changes the deltas that follow.
    """

    def __init__(
        self,
        symbol: str,
        depth: int = 50,
        seed: int = 0,
        mid: float = 30000.0,
        tick: float = 0.1,
        *,
        size_decimals: int = 3,
        start_u: int | None = None,
    ) -> None:
        """Build the initial book around ``mid``; ``start_u`` pins the first ``u`` (default: seeded)."""
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if size_decimals < 0:
            raise ValueError(f"size_decimals must be >= 0, got {size_decimals}")
        self.symbol = symbol
        self.depth = depth
        self.topic = f"orderbook.{depth}.{symbol}"
        # A string seed is hashed with SHA-512 by random.Random, so it is stable across processes (no
        # PYTHONHASHSEED dependence) and gives each (symbol, depth) its own stream under one seed.
        self._rng = random.Random(f"book|{seed}|{symbol}|{depth}")
        self._trng = random.Random(f"time|{seed}|{symbol}|{depth}")  # timestamps only
        self._tick_units, self._price_decimals = _tick_units(tick)
        self._size_decimals = size_decimals
        self._reserve = max(5, depth // 10)  # hidden levels below the window, refilled as needed
        mid_ticks = round(mid / tick)
        # Bids must stay above zero even after the deepest refill; refuse a mid too small for the depth.
        if mid_ticks < (depth + 3 * self._reserve) * _MAX_GAP_TICKS + 100:
            raise ValueError(f"mid {mid} is too small for depth {depth} at tick {tick}")
        self._bid_px: list[int] = []  # ascending; the best bid is the last
        self._ask_px: list[int] = []  # ascending; the best ask is the first
        self._bid_sz: dict[int, int] = {}
        self._ask_sz: dict[int, int] = {}
        self._build(mid_ticks)
        self._u = start_u if start_u is not None else self._rng.randint(1_000_000, 250_000_000)
        self._seq = self._rng.randint(10**9, 10**11)
        self._cts: int | None = None  # engine time of the last change

    # ----------------------------------------------------------------------------------------- public

    @property
    def u(self) -> int:
        """The update id of the current book (the ``u`` of the last message, or of the next snapshot)."""
        return self._u

    @property
    def seq(self) -> int:
        """The cross sequence of the current book."""
        return self._seq

    def bids(self) -> list[tuple[float, float]]:
        """The published bid window, best (highest) first, as (price, size) floats."""
        return [(self._price_float(p), self._size_float(self._bid_sz[p])) for p in self._bid_window()]

    def asks(self) -> list[tuple[float, float]]:
        """The published ask window, best (lowest) first, as (price, size) floats."""
        return [(self._price_float(p), self._size_float(self._ask_sz[p])) for p in self._ask_window()]

    def snapshot(self, ts_ms: int) -> Msg:
        """A ``snapshot`` message of the current window; does not change the book or ``u``."""
        if self._cts is None:
            # Bybit's on-subscribe snapshot carries the engine time of the last change, often seconds old.
            self._cts = ts_ms - self._trng.randint(100, 2000)
        cts = min(self._cts, ts_ms)
        bids = [[self._price_str(p), self._size_str(self._bid_sz[p])] for p in self._bid_window()]
        asks = [[self._price_str(p), self._size_str(self._ask_sz[p])] for p in self._ask_window()]
        return self._message("snapshot", ts_ms, cts, bids, asks)

    def delta(self, ts_ms: int) -> Msg:
        """Evolve the book and return the ``delta`` message for it (never empty); ``u`` += 1."""
        before_b = self._window_dict(self._bid_window(), self._bid_sz)
        before_a = self._window_dict(self._ask_window(), self._ask_sz)
        bids: list[list[str]] = []
        asks: list[list[str]] = []
        # Changes deeper than the window are invisible; keep mutating until subscribers would see one.
        for attempt in range(200):
            if attempt == 199:
                self._force_update()
            for _ in range(1 + min(7, int(self._rng.expovariate(0.55)))):
                self._mutate()
            after_b = self._window_dict(self._bid_window(), self._bid_sz)
            after_a = self._window_dict(self._ask_window(), self._ask_sz)
            bids = self._diff(before_b, after_b, descending=True)
            asks = self._diff(before_a, after_a, descending=False)
            if bids or asks:
                break
        self._u += 1
        self._seq += self._rng.randint(1, 20)
        cts = ts_ms - self._trng.randint(2, 55)
        if self._cts is not None:
            cts = max(cts, min(self._cts, ts_ms))  # engine time never runs backwards
        self._cts = cts
        return self._message("delta", ts_ms, cts, bids, asks)

    def next_message(self, ts_ms: int) -> Msg:
        """The next pushed message as Bybit sends it: a delta, or for depth 1 a snapshot (ob1 sends no
        deltas since 2025-03-20). Either way the book evolves and ``u`` += 1."""
        if self.depth == 1:
            self.delta(ts_ms)
            return self.snapshot(ts_ms)
        return self.delta(ts_ms)

    # --------------------------------------------------------------------------- fault injection
    # Used by the fake server to script gaps, restarts and bad frames. None of these touch the book's
    # random stream except skip() and restart(), which evolve the book exactly like unsent deltas.

    def skip(self, n: int, ts_ms: int) -> None:
        """Evolve the book ``n`` times as if ``n`` deltas had been published but never sent (``u`` += n).

        A client that misses them holds a book that really differs from this one: a true gap."""
        for _ in range(n):
            self.delta(ts_ms)

    def restart(self, ts_ms: int) -> None:
        """Model Bybit's service restart: the book moves on once (unsent), then ``u`` starts over at 1.

        ``seq`` keeps rising (it is the engine's cross sequence, not the feed's counter). The next
        ``snapshot()`` carries ``u == 1`` and the next delta ``u == 2``."""
        self.delta(ts_ms)
        self._u = 1

    def top_levels(self) -> tuple[list[str], list[str]]:
        """The best bid and best ask as published ``[price, size]`` strings."""
        bid, ask = self._bid_px[-1], self._ask_px[0]
        return ([self._price_str(bid), self._size_str(self._bid_sz[bid])],
                [self._price_str(ask), self._size_str(self._ask_sz[ask])])

    def crossing_bid(self) -> list[str]:
        """A ``[price, size]`` bid one tick above the best ask: applied to this book it crosses it."""
        return [self._price_str(self._ask_px[0] + 1), self._size_str(1000)]

    def forge(self, kind: str, ts_ms: int, bids: list[list[str]], asks: list[list[str]], *, u: int,
              seq: int) -> Msg:
        """A message shaped exactly like this topic's (key order, fields) with the given content.

        The book is not changed: the caller decides what the message claims."""
        msg = self._message(kind, ts_ms, max(0, ts_ms - 20), bids, asks)
        msg["data"]["u"] = u
        msg["data"]["seq"] = seq
        return msg

    # ------------------------------------------------------------------------------------ formatting

    def _price_str(self, ticks: int) -> str:
        return _fmt_fixed(ticks * self._tick_units, self._price_decimals)

    def _size_str(self, lots: int) -> str:
        return _fmt_fixed(lots, self._size_decimals)

    def _price_float(self, ticks: int) -> float:
        # int / int is correctly rounded, so this equals float() of the published string.
        return ticks * self._tick_units / 10**self._price_decimals

    def _size_float(self, lots: int) -> float:
        return lots / 10**self._size_decimals

    def _message(self, kind: str, ts_ms: int, cts: int, bids: list[list[str]], asks: list[list[str]]) -> Msg:
        data = {"s": self.symbol, "b": bids, "a": asks, "u": self._u, "seq": self._seq}
        if self.depth == 1:
            # Level 1 puts ts before type; other futures depths put type first (orderbook.mdx reminder).
            return {"topic": self.topic, "ts": ts_ms, "type": kind, "data": data, "cts": cts}
        return {"topic": self.topic, "type": kind, "ts": ts_ms, "data": data, "cts": cts}

    # ----------------------------------------------------------------------------------------- book

    def _bid_window(self) -> list[int]:
        return self._bid_px[: -self.depth - 1 : -1]

    def _ask_window(self) -> list[int]:
        return self._ask_px[: self.depth]

    @staticmethod
    def _window_dict(window: list[int], sizes: dict[int, int]) -> dict[int, int]:
        return {p: sizes[p] for p in window}

    def _diff(self, before: dict[int, int], after: dict[int, int], *, descending: bool) -> list[list[str]]:
        changed = {p: 0 for p in before if p not in after}
        changed.update({p: s for p, s in after.items() if before.get(p) != s})
        # Real deltas list each side in book order (bids high to low, asks low to high), and a delete is
        # the bare string "0" whatever the lot size.
        return [
            [self._price_str(p), self._size_str(changed[p]) if changed[p] else "0"]
            for p in sorted(changed, reverse=descending)
        ]

    def _rand_size(self) -> int:
        # Log-normal: mostly small resting orders, now and then a big one, like the captures.
        return max(1, int(self._rng.lognormvariate(5.0, 1.3)))

    def _new_size(self, old: int) -> int:
        for _ in range(10):
            if self._rng.random() < 0.5:
                step = self._rng.randint(1, max(1, old // 3))
                new = old + step if self._rng.random() < 0.5 else old - step
            else:
                new = self._rand_size()
            if new >= 1 and new != old:
                return new
        return old + 1

    def _build(self, mid_ticks: int) -> None:
        rng = self._rng
        target = self.depth + 2 * self._reserve
        dense = rng.randint(3, 10)  # real tops are packed tick by tick, then thin out
        px = mid_ticks - 1
        for i in range(target):
            self._bid_sz[px] = self._rand_size()
            px -= 1 if i < dense else rng.randint(1, _MAX_GAP_TICKS)
        px = mid_ticks
        for i in range(target):
            self._ask_sz[px] = self._rand_size()
            px += 1 if i < dense else rng.randint(1, _MAX_GAP_TICKS)
        self._bid_px = sorted(self._bid_sz)
        self._ask_px = sorted(self._ask_sz)

    def _insert(self, is_bid: bool, px: int) -> None:
        if is_bid:
            self._bid_sz[px] = self._rand_size()
            insort(self._bid_px, px)
        else:
            self._ask_sz[px] = self._rand_size()
            insort(self._ask_px, px)

    def _delete(self, is_bid: bool, px: int) -> None:
        if is_bid:
            del self._bid_sz[px]
            self._bid_px.remove(px)
        else:
            del self._ask_sz[px]
            self._ask_px.remove(px)

    def _mutate(self) -> None:
        r = self._rng.random()
        is_bid = self._rng.random() < 0.5
        if r < _W_UPDATE:
            self._ev_update(is_bid)
        elif r < _W_UPDATE + _W_INSERT:
            self._ev_insert(is_bid)
        elif r < _W_UPDATE + _W_INSERT + _W_DELETE:
            self._ev_delete(is_bid)
        else:
            self._ev_move_best(is_bid)
        if self._ask_px[0] - self._bid_px[-1] > _MAX_SPREAD_TICKS:
            self._improve(self._rng.random() < 0.5)
        self._refill()

    def _ev_update(self, is_bid: bool) -> None:
        window = self._bid_window() if is_bid else self._ask_window()
        sizes = self._bid_sz if is_bid else self._ask_sz
        # Square of a uniform: most activity sits at the top of the book.
        px = window[int(len(window) * self._rng.random() ** 2)]
        sizes[px] = self._new_size(sizes[px])

    def _ev_insert(self, is_bid: bool) -> None:
        # A new level strictly inside the window (between best and the window's last level); if the
        # window is full, the last level falls out, which the diff turns into a delete.
        window = self._bid_window() if is_bid else self._ask_window()
        sizes = self._bid_sz if is_bid else self._ask_sz
        lo, hi = sorted((window[0], window[-1]))
        if hi - lo < 2:
            return
        for _ in range(6):
            px = self._rng.randint(lo + 1, hi - 1)
            if px not in sizes:
                self._insert(is_bid, px)
                return

    def _ev_delete(self, is_bid: bool) -> None:
        # Not the best level: moving the best is its own, rarer, event.
        window = self._bid_window() if is_bid else self._ask_window()
        if len(window) >= 2:
            self._delete(is_bid, window[self._rng.randrange(1, len(window))])

    def _ev_move_best(self, is_bid: bool) -> None:
        r = self._rng.random()
        if r < 0.45 and self._improve(is_bid):
            return
        if r < 0.75:
            self._delete(is_bid, self._bid_px[-1] if is_bid else self._ask_px[0])  # best withdrawn
            return
        # A sweep: an aggressive order eats 1-3 levels of one side, and the other side often follows
        # into the gap, so the whole book shifts.
        for _ in range(self._rng.randint(1, 3)):
            self._delete(is_bid, self._bid_px[-1] if is_bid else self._ask_px[0])
        if self._rng.random() < 0.6:
            self._improve(not is_bid)

    def _improve(self, is_bid: bool) -> bool:
        """Add a level strictly inside the spread on one side; False when the spread is one tick."""
        best_bid, best_ask = self._bid_px[-1], self._ask_px[0]
        if best_ask - best_bid < 2:
            return False
        if is_bid:
            px = self._rng.randint(best_bid + 1, min(best_ask - 1, best_bid + 3))
        else:
            px = self._rng.randint(max(best_bid + 1, best_ask - 3), best_ask - 1)
        self._insert(is_bid, px)
        return True

    def _refill(self) -> None:
        # Deletes and sweeps eat levels; keep a hidden reserve below the window so it stays full, and
        # trim the far end so the book does not grow without bound (trimmed levels were never visible).
        low, high = self.depth + self._reserve, self.depth + 3 * self._reserve
        while len(self._bid_px) < low:
            px = self._bid_px[0] - self._rng.randint(1, _MAX_GAP_TICKS)
            if px < 1:
                break
            self._bid_sz[px] = self._rand_size()
            self._bid_px.insert(0, px)
        while len(self._ask_px) < low:
            px = self._ask_px[-1] + self._rng.randint(1, _MAX_GAP_TICKS)
            self._ask_sz[px] = self._rand_size()
            self._ask_px.append(px)
        while len(self._bid_px) > high:
            del self._bid_sz[self._bid_px.pop(0)]
        while len(self._ask_px) > high:
            del self._ask_sz[self._ask_px.pop()]

    def _force_update(self) -> None:
        px = self._bid_px[-1]
        self._bid_sz[px] = self._new_size(self._bid_sz[px])
