"""Tests of the synthetic order book behind every topic of the fake Bybit server (tests/fakes/synthetic.py): valid
after every message, deterministic per seed, calibrated like the real feed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_client import Replay
from tests.fakes.synthetic import SyntheticBook


def replay_synthetic(book: SyntheticBook, n: int) -> Replay:
    replay = Replay(book.depth)
    replay.apply(book.snapshot(1_000_000))
    for i in range(n):
        replay.apply(book.next_message(1_000_000 + 20 * (i + 1)))
    assert replay.top() == (book.bids(), book.asks())
    return replay


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    depth=st.sampled_from([1, 50, 200]),
    spec=st.sampled_from([(30000.0, 0.1), (2000.0, 0.01), (2.0, 0.0001), (60000.0, 0.5), (90000.0, 10.0)]),
)
def test_synthetic_book_stays_valid(seed: int, depth: int, spec: tuple[float, float]) -> None:
    mid, tick = spec
    replay_synthetic(SyntheticBook("XUSDT", depth, seed=seed, mid=mid, tick=tick), 150)


def test_synthetic_is_deterministic_and_calibrated() -> None:
    a = SyntheticBook("BTCUSDT", 50, seed=42)
    b = SyntheticBook("BTCUSDT", 50, seed=42)
    b.snapshot(5)  # snapshots do not consume the book's randomness
    msgs = [a.delta(1000 + i) for i in range(500)]
    assert msgs == [b.delta(1000 + i) for i in range(500)]
    assert msgs != [SyntheticBook("BTCUSDT", 50, seed=43).delta(1000 + i) for i in range(500)]
    replay = replay_synthetic(SyntheticBook("BTCUSDT", 50, seed=7), 500)
    assert replay.updates > 2 * replay.inserts > 0 and replay.deletes == replay.inserts
    sizes = sorted(len(m["data"]["b"]) + len(m["data"]["a"]) for m in msgs)
    assert sizes[0] >= 1 and 1 <= sizes[len(sizes) // 2] <= 5 and sizes[int(len(sizes) * 0.95)] <= 10
    price = SyntheticBook("BTCUSDT", 50, seed=0, mid=30000.0, tick=0.1).snapshot(0)["data"]["b"][0][0]
    assert price == "29999.9"


def test_synthetic_rejects_bad_config() -> None:
    with pytest.raises(ValueError):
        SyntheticBook("X", 0)
    with pytest.raises(ValueError):
        SyntheticBook("X", 1000, mid=1.0, tick=0.01)
