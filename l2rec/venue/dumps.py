"""Read recorded websocket messages, one per line: our captures and Bybit's daily dumps.

Plain, ``.gz`` or ``.zip`` (every member in name order). Lines are yielded as bytes, untouched: the parser
decides what they are. Blank lines are skipped.
"""

from __future__ import annotations

import gzip
import io
import itertools
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import orjson


class ReadPosition:
    """How far a reader got into its file, in bytes of the file itself (compressed bytes for ``.gz`` and
    ``.zip``): the share of the file a replay has read. Asked for once a second, never per line."""

    def __init__(self) -> None:
        self.raw: BinaryIO | None = None  # the file as opened from disk, under any decompression
        self.size = 0
        self.finished = False

    def bytes_read(self) -> int:
        """Bytes of the file consumed so far (read ahead by the buffers, so slightly early)."""
        if self.finished:
            return self.size
        raw = self.raw
        if raw is None:
            return 0
        try:
            return min(self.size, raw.tell())
        except (OSError, ValueError):  # closed between the check and the call: read to its end
            return self.size


def _open_streams(path: Path, position: ReadPosition | None = None) -> Iterator[Iterable[bytes]]:
    with path.open("rb") as probe:
        magic = probe.read(4)
    pos = position if position is not None else ReadPosition()
    pos.size = path.stat().st_size
    # The file is opened here, and decompressed from that handle, so that its position is the share read.
    with path.open("rb", buffering=1 << 20) as raw:
        pos.raw = raw
        if magic[:2] == b"\x1f\x8b":
            with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
                yield fh
        elif magic == b"PK\x03\x04":
            with zipfile.ZipFile(raw) as zf:
                for name in sorted(n for n in zf.namelist() if not n.endswith("/")):
                    with zf.open(name) as member:
                        yield io.BufferedReader(member, buffer_size=1 << 20)  # type: ignore[type-var]  # a ZipExtFile reads like a raw stream; typeshed wants RawIOBase
        else:
            yield raw
    pos.finished = True


def read_lines(path: str | Path, position: ReadPosition | None = None) -> Iterator[bytes]:
    """Every non-blank line of the file (or of each archive member), without its line ending; ``position``
    follows how far into the file the reading got."""
    for stream in _open_streams(Path(path), position):
        for line in stream:
            line = line.strip()
            if line:
                yield line


def read_batches(path: str | Path, batch: int, partition: tuple[int, int] = (0, 1),
                 position: ReadPosition | None = None) -> Iterator[list[bytes]]:
    """Lines in lists of ``batch``, only those of ``partition`` = (index, count)."""
    index, count = partition
    out: list[bytes] = []
    for line in read_lines(path, position):
        if count > 1 and not in_partition(line, index, count):
            continue
        out.append(line)
        if len(out) >= batch:
            yield out
            out = []
    if out:
        yield out


_TOPIC_KEY = b'"topic":"'


def line_topic(line: bytes) -> bytes | None:
    """The value of the first ``"topic"`` key, found without parsing (Bybit puts it first); None if absent."""
    i = line.find(_TOPIC_KEY)
    if i < 0:
        return None
    i += len(_TOPIC_KEY)
    j = line.find(b'"', i)
    return line[i:j] if j > i else None


def in_partition(line: bytes, index: int, count: int) -> bool:
    """Whether replay shard ``index`` of ``count`` owns this line: every line of a topic goes to the same
    shard (by CRC32 of the topic), lines without a readable topic to shard 0."""
    if count == 1:
        return True
    topic = line_topic(line)
    if topic is None:
        return index == 0
    return zlib.crc32(topic) % count == index


# ------------------------------------------------------------------------------------- the file's category
#
# ``category`` is part of the natural key, so a replay must label its rows with the category the file was
# recorded from: spot labelled linear is wrong data, and the same file replayed once with and once without
# ``--category`` would be stored twice. The rule (README, "Replay."): the flag or the environment (or a
# config file that names the replay file too) wins; else a directory of the file's path named after a
# category (Bybit's dumps live under .../orderbook/{linear,spot,inverse,option}/SYMBOL/...); else what
# the first lines show. When that leaves more than one category, the user must say: never a default.

ALL_CATEGORIES: tuple[str, ...] = ("linear", "spot", "inverse", "option")
CATEGORY_SCAN_LINES = 200  # lines read to infer the category: acks and topics come first in a capture
# Option symbols: BASE-DMMMYY-STRIKE-C|P, optionally with a settle coin (BTC-6JAN23-18000-C, ETH-27JUN25-
# 3000-P-USDT).
_OPTION_SYMBOL = re.compile(r"^[A-Z0-9]+-\d{1,2}[A-Z]{3}\d{2}-\d+(?:\.\d+)?-[CP](?:-[A-Z]+)?$")
# Inverse contracts are quoted in USD (BTCUSD, and futures with a month code: BTCUSDH25); linear ones in
# USDT or USDC (XRPUSDT, BTCPERP, BTC-27DEC24); spot pairs in anything (ETHBTC, BTCUSDT).
_INVERSE_SYMBOL = re.compile(r"^[A-Z0-9]+USD(?:[FGHJKMNQUVXZ]\d{2})?$")
_LINEAR_OR_INVERSE_DEPTHS = frozenset({500})  # removed in 2025, but in every dump of before; never spot
_OPTION_DEPTHS = frozenset({25, 100})


@dataclass(frozen=True, slots=True)
class CategoryEvidence:
    """What a replay file says about its category: ``category`` when exactly one fits, else None;
    ``why`` says where it came from (or what left it open), for the log and the error message;
    ``allowed``: the categories the frames leave possible."""

    category: str | None
    why: str
    allowed: frozenset[str] = frozenset(ALL_CATEGORIES)
    needed: bool = True  # False: the whole file holds no order book frame, so no row needs a category


def category_from_path(path: str | Path) -> str | None:
    """The category named by the nearest directory of the path (``.../orderbook/spot/BTCUSDT/x.zip``)."""
    for part in reversed(Path(path).absolute().parts[:-1]):
        if part in ALL_CATEGORIES:
            return part
    return None


def category_from_lines(lines: Iterable[bytes]) -> CategoryEvidence:
    """The categories the lines allow, narrowed by each clue:

    - a subscribe ack: spot's says ``"ret_msg":"subscribe"``, linear's and inverse's ``"ret_msg":""``;
      option's is a ``"type":"COMMAND_RESP"`` (bybit-v5.md, "Responses");
    - a book topic's depth: 25 or 100 only option, 500 only linear or inverse (Bybit's dumps of before 2025);
    - its symbol: an option's pattern (``BTC-6JAN23-18000-C``); quoted in USD (inverse or spot, never
      linear); ending in USDT (never inverse).
    Frames of linear and spot books look alike otherwise (both carry ``seq`` and ``cts``)."""
    allowed = set(ALL_CATEGORIES)
    clues: list[str] = []
    seen_book = False

    def narrow(to: set[str], clue: str) -> None:
        nonlocal allowed
        if not allowed <= to:
            allowed &= to
            clues.append(clue)

    for line in lines:
        try:  # a few hundred lines, parsed whole: spacing and key order vary between captures
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(msg, dict):
            continue
        topic = msg.get("topic")
        if not isinstance(topic, str):
            _reply_clue(msg, narrow)
            continue
        parts = topic.split(".")
        if len(parts) != 3 or parts[0] != "orderbook" or not parts[1].isdigit():
            continue
        seen_book = True
        depth, symbol = int(parts[1]), parts[2]
        if depth in _OPTION_DEPTHS or _OPTION_SYMBOL.match(symbol):
            narrow({"option"}, f"option topic {topic}")
        else:
            narrow({"linear", "spot", "inverse"}, f"symbol {symbol} (not an option's)")
        if depth in _LINEAR_OR_INVERSE_DEPTHS:
            narrow({"linear", "inverse"}, f"depth {depth} (linear and inverse only)")
        if _INVERSE_SYMBOL.match(symbol):
            narrow({"inverse", "spot"}, f"symbol {symbol} quoted in USD (not linear)")
        elif symbol.endswith("USDT"):
            narrow({"linear", "spot", "option"}, f"symbol {symbol} quoted in USDT (not inverse)")
    fits = frozenset(allowed)
    if not allowed:
        return CategoryEvidence(None, "its frames contradict each other (" + "; ".join(clues) + ")", fits)
    if len(allowed) == 1:
        return CategoryEvidence(next(iter(allowed)), "its frames show " + "; ".join(clues), fits)
    if not seen_book and not clues:
        return CategoryEvidence(None, "no order book frame or subscribe ack in its first lines", fits)
    return CategoryEvidence(None, "its frames fit " + " or ".join(c for c in ALL_CATEGORIES if c in allowed)
                            + (" (" + "; ".join(clues) + ")" if clues else ""), fits)


def _reply_clue(msg: dict[str, object], narrow: Callable[[set[str], str], None]) -> None:
    """What a reply's shape says: only successful subscribe acks tell a category."""
    if msg.get("type") == "COMMAND_RESP":
        narrow({"option"}, "an option subscribe reply (COMMAND_RESP)")
        return
    if msg.get("op") != "subscribe" or msg.get("success") is not True:
        return
    if msg.get("ret_msg") == "subscribe":
        narrow({"spot"}, 'a spot subscribe ack ("ret_msg":"subscribe")')
    elif msg.get("ret_msg") == "":
        narrow({"linear", "inverse"}, 'a linear/inverse subscribe ack ("ret_msg":"")')


def _is_book_line(line: bytes) -> bool:
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(msg, dict) and isinstance(msg.get("topic"), str) and msg["topic"].startswith("orderbook.")


def infer_category(path: str | Path, max_lines: int = CATEGORY_SCAN_LINES) -> CategoryEvidence:
    """The category of a replay file from its path, else from its first ``max_lines`` lines. A path that
    the frames contradict is no answer either (a file moved to the wrong directory)."""
    head = list(itertools.islice(read_lines(path), max_lines))
    if len(head) < max_lines and not any(_is_book_line(line) for line in head):
        # The whole file was read and holds no order book frame: no row will be labelled (the replay
        # exits 65, EX_DATAERR, saying so), so no category is needed.
        return CategoryEvidence(None, "the file holds no order book frame", needed=False)
    frames = category_from_lines(head)
    named = category_from_path(path)
    if named is not None:
        if named not in frames.allowed:
            return CategoryEvidence(None, f"its path says {named} but {frames.why}", frames.allowed)
        return CategoryEvidence(named, f"a directory of its path is named {named}", frames.allowed)
    return frames
