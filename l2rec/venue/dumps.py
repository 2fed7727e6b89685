"""Read recorded websocket messages, one per line: our captures and Bybit's daily dumps.

Plain, ``.gz`` or ``.zip`` (every member in name order). Lines are yielded as bytes, untouched: the parser
decides what they are. Blank lines are skipped.
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path


def _open_streams(path: Path) -> Iterator[Iterable[bytes]]:
    with path.open("rb") as probe:
        magic = probe.read(4)
    if magic[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            yield fh
    elif magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as zf:
            for name in sorted(n for n in zf.namelist() if not n.endswith("/")):
                with zf.open(name) as member:
                    yield io.BufferedReader(member, buffer_size=1 << 20)  # type: ignore[type-var]  # a ZipExtFile reads like a raw stream; typeshed wants RawIOBase
    else:
        with path.open("rb", buffering=1 << 20) as fh:
            yield fh


def read_lines(path: str | Path) -> Iterator[bytes]:
    """Every non-blank line of the file (or of each archive member), without its line ending."""
    for stream in _open_streams(Path(path)):
        for line in stream:
            line = line.strip()
            if line:
                yield line


def read_batches(path: str | Path, batch: int, partition: tuple[int, int] = (0, 1)) -> Iterator[list[bytes]]:
    """Lines in lists of ``batch``, only those of ``partition`` = (index, count)."""
    index, count = partition
    out: list[bytes] = []
    for line in read_lines(path):
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
