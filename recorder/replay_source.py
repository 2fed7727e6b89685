"""Read recorded websocket messages, one per line: our captures and Bybit's daily dumps.

Plain, ``.gz`` or ``.zip`` (every member in name order). Lines are yielded as bytes, untouched: the parser
decides what they are. Blank lines are skipped.
"""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _open_streams(path: Path) -> Iterator[IO[bytes]]:
    with path.open("rb") as probe:
        magic = probe.read(4)
    if magic[:2] == b"\x1f\x8b":
        with gzip.open(path, "rb") as fh:
            yield fh
    elif magic == b"PK\x03\x04":
        with zipfile.ZipFile(path) as zf:
            for name in sorted(n for n in zf.namelist() if not n.endswith("/")):
                with zf.open(name) as member:
                    yield io.BufferedReader(member, buffer_size=1 << 20)  # type: ignore[arg-type]
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


def read_batches(path: str | Path, batch: int) -> Iterator[list[bytes]]:
    out: list[bytes] = []
    for line in read_lines(path):
        out.append(line)
        if len(out) >= batch:
            yield out
            out = []
    if out:
        yield out
