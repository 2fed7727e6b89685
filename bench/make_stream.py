"""Deterministic synthetic Bybit v5 ``orderbook.50`` streams for the benchmark, one websocket message a line.

The books come from ``tests/fakes/synthetic.SyntheticBook`` (calibrated on the real recordings: mostly size
updates near the top, inserts and deletes inside and at the edge of the 50-level window, 1-10 levels per
delta, ``u`` +1 per delta). This module only decides *which* books and *when*:

- one book per symbol, each with its own mid and tick (so prices are formatted with 1 to 5 decimals);
- every symbol pushes one delta every ``interval_ms`` (20 ms, Bybit's cadence for ``orderbook.50``) at a
  fixed phase of its own, and frames are written in exchange-time order, so the symbols are interleaved
  the way one multiplexed websocket delivers them;
- each topic starts with a snapshot (what Bybit sends on subscribe); the snapshots count as frames.

Same arguments, same bytes: the file name carries the parameters and a fingerprint of this file and of
what ``SyntheticBook`` generates, so a cached stream is reused only while neither changed.

    python bench/make_stream.py --symbols 20 --frames 200000 --out /tmp/l2rec-bench
    python bench/make_stream.py --calibration       # compare the mix with the real recordings
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.synthetic import SyntheticBook  # noqa: E402  (needs ROOT on sys.path)

DEFAULT_CACHE = Path(os.environ.get("L2REC_BENCH_CACHE", "/tmp/l2rec-bench"))
START_TS_MS = 1_733_011_200_000  # 2024-12-01T00:00:00Z, the day of the real nautilus recording
DEPTH = 50
INTERVAL_MS = 20

# (symbol, mid, tick, size decimals): real linear names with roughly real prices and ticks. Beyond these,
# symbols are named SYN0001USDT... with the fake server's default spec (mid 100, tick 0.01).
SPECS: tuple[tuple[str, float, float, int], ...] = (
    ("BTCUSDT", 96000.0, 0.1, 3),
    ("ETHUSDT", 3600.0, 0.01, 2),
    ("SOLUSDT", 230.0, 0.01, 1),
    ("XRPUSDT", 1.95, 0.0001, 0),
    ("DOGEUSDT", 0.41, 0.00001, 0),
    ("ADAUSDT", 1.05, 0.0001, 0),
    ("BNBUSDT", 650.0, 0.01, 2),
    ("AVAXUSDT", 48.0, 0.001, 1),
    ("LINKUSDT", 21.0, 0.001, 1),
    ("DOTUSDT", 8.8, 0.001, 1),
    ("LTCUSDT", 120.0, 0.01, 1),
    ("TRXUSDT", 0.2, 0.00001, 0),
    ("SUIUSDT", 3.6, 0.0001, 0),
    ("NEARUSDT", 6.9, 0.001, 1),
    ("APTUSDT", 12.5, 0.0001, 2),
    ("ARBUSDT", 0.95, 0.0001, 1),
    ("OPUSDT", 2.4, 0.0001, 1),
    ("PEPEUSDT", 0.02, 0.0000001, 0),
    ("WIFUSDT", 3.1, 0.0001, 0),
    ("1000BONKUSDT", 0.045, 0.000001, 0),
)
_OTHER = (100.0, 0.01, 2)


def symbol_specs(n: int) -> list[tuple[str, float, float, int]]:
    """The first ``n`` symbols: the real-looking ones, then SYN0001USDT... (mid 100, tick 0.01)."""
    out = list(SPECS[:n])
    out += [(f"SYN{i:04d}USDT", *_OTHER) for i in range(1, n - len(out) + 1)]
    return out


_FP: list[str] = []


def _fingerprint() -> str:
    """This file's code and what the generator actually produces (a 20-symbol sample), not synthetic.py's
    text: edits there that leave the stream alone (new helpers) keep the cache."""
    if not _FP:
        h = hashlib.sha256(Path(__file__).read_bytes())
        for line in messages(20, 400, 0):
            h.update(line)
        _FP.append(h.hexdigest()[:10])
    return _FP[0]


def stream_path(cache: Path, symbols: int, frames: int, seed: int) -> Path:
    return cache / f"ob50_{symbols}sym_{frames}f_seed{seed}_{_fingerprint()}.jsonl"


def one_frame_path(cache: Path, seed: int) -> Path:
    return cache / f"ob50_oneframe_seed{seed}_{_fingerprint()}.jsonl"


def messages(symbols: int, frames: int, seed: int = 1, interval_ms: int = INTERVAL_MS) -> Iterator[bytes]:
    """``frames`` messages: a snapshot per symbol, then deltas round-robin in exchange-time order."""
    specs = symbol_specs(symbols)
    books = [SyntheticBook(sym, DEPTH, seed=seed, mid=mid, tick=tick, size_decimals=sd)
             for sym, mid, tick, sd in specs]
    phase_rng = random.Random(f"phase|{seed}|{symbols}")
    # Each symbol pushes at its own fixed phase within the interval: sorting a round by phase interleaves
    # the symbols like one multiplexed socket (and keeps ts non-decreasing within the file).
    phases = [phase_rng.randrange(interval_ms) for _ in books]
    order = sorted(range(len(books)), key=lambda i: (phases[i], i))
    n = 0
    for i in order:
        if n >= frames:
            return
        yield orjson.dumps(books[i].snapshot(START_TS_MS + phases[i]))
        n += 1
    rnd = 1
    while n < frames:
        base = START_TS_MS + rnd * interval_ms
        for i in order:
            if n >= frames:
                return
            yield orjson.dumps(books[i].delta(base + phases[i]))
            n += 1
        rnd += 1


@dataclass
class MixStats:
    """What a stream looks like: levels per delta and the update/insert/delete mix (per level)."""

    deltas: int = 0
    snapshots: int = 0
    levels_per_delta: list[int] = field(default_factory=list)
    updates: int = 0
    inserts: int = 0
    deletes: int = 0
    bytes_total: int = 0
    books: dict[str, tuple[dict[str, str], dict[str, str]]] = field(default_factory=dict)

    def feed(self, line: bytes) -> None:
        self.bytes_total += len(line)
        msg = orjson.loads(line)
        if not isinstance(msg, dict) or not str(msg.get("topic", "")).startswith("orderbook."):
            return
        data = msg["data"]
        topic = msg["topic"]
        if msg["type"] == "snapshot":
            self.snapshots += 1
            self.books[topic] = ({float(p): s for p, s in data["b"]}, {float(p): s for p, s in data["a"]})
            return
        if topic not in self.books:
            return
        self.deltas += 1
        self.levels_per_delta.append(len(data["b"]) + len(data["a"]))
        for side, key in zip(self.books[topic], ("b", "a"), strict=True):
            for p, s in data[key]:
                fp = float(p)
                if float(s) == 0.0:
                    self.deletes += 1
                    side.pop(fp, None)
                elif fp in side:
                    self.updates += 1
                    side[fp] = s
                else:
                    self.inserts += 1
                    side[fp] = s

    def summary(self) -> str:
        lv = self.levels_per_delta
        if not lv:
            return f"{self.snapshots} snapshots, no deltas"
        total = self.updates + self.inserts + self.deletes
        q = statistics.quantiles(lv, n=10) if len(lv) >= 10 else [float(max(lv))] * 9
        return (f"{self.deltas} deltas: levels/delta mean {statistics.fmean(lv):.2f}, p50 {statistics.median(lv):.0f}, "
                f"p90 {q[8]:.0f}, max {max(lv)}; per level: update {self.updates / total:.1%}, "
                f"insert {self.inserts / total:.1%}, delete {self.deletes / total:.1%}; "
                f"{self.bytes_total / (self.deltas + self.snapshots):.0f} bytes/frame")


def mix_of(lines: Iterable[bytes]) -> MixStats:
    st = MixStats()
    for line in lines:
        st.feed(line)
    return st


def write_stream(path: Path, symbols: int, frames: int, seed: int) -> MixStats:
    """Write the stream atomically (a half-written cache file is never reused); returns its mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    st = MixStats()
    with tmp.open("wb") as fh:
        for line in messages(symbols, frames, seed):
            st.feed(line)
            fh.write(line + b"\n")
    os.replace(tmp, path)
    return st


def ensure_stream(cache: Path, symbols: int, frames: int, seed: int = 1, *, quiet: bool = False) -> Path:
    """The cached stream file, generated if missing."""
    path = stream_path(cache, symbols, frames, seed)
    if not path.exists():
        if not quiet:
            print(f"generating {path.name} ({symbols} symbols, {frames} frames) ...", flush=True)
        st = write_stream(path, symbols, frames, seed)
        if not quiet:
            print(f"  {st.summary()}", flush=True)
    return path


def ensure_one_frame(cache: Path, seed: int = 1) -> Path:
    """A file of one snapshot frame: the start-up + shutdown baseline of a ``--replay`` run."""
    path = one_frame_path(cache, seed)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(next(messages(1, 1, seed)) + b"\n")
        os.replace(tmp, path)
    return path


def _real_recordings() -> list[tuple[str, list[bytes]]]:
    out = []
    data = ROOT / "tests" / "data"
    for name in ("nautilus_trader__2024-12-01_XRPUSDT_ob500.data", "FastMM__raw_md_stream.jsonl",
                 "tickvault__bybit_orderbook.jsonl"):
        p = data / name
        if p.exists():
            out.append((name, [ln.strip() for ln in p.read_bytes().splitlines() if ln.strip()]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--symbols", type=int, action="append", help="symbols per stream (repeatable; default 1 and 20)")
    ap.add_argument("--frames", type=int, default=200_000, help="frames per stream (default 200000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_CACHE, help=f"cache directory (default {DEFAULT_CACHE})")
    ap.add_argument("--calibration", action="store_true",
                    help="print the mix of a 20-symbol sample next to the real recordings in tests/data")
    args = ap.parse_args(argv)
    if args.calibration:
        print(f"synthetic ob50, 20 symbols: {mix_of(messages(20, 20_000, args.seed)).summary()}")
        for name, lines in _real_recordings():
            print(f"{name}: {mix_of(lines).summary()}")
        return 0
    for n in args.symbols or [1, 20]:
        print(ensure_stream(args.out, n, args.frames, args.seed))
    print(ensure_one_frame(args.out, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
