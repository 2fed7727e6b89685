"""The Parquet archive: one file per (table, UTC hour, symbol), written durably and idempotently.

Plain functions; the SQLite side (which hour, which rows, when they may leave) is in
``l2rec.storage.sqlite`` and ``l2rec.storage.retention``. pyarrow is an optional extra (``parquet``): it is
imported only here, and only when an archive is written or read.

A file is written under a temporary name (hidden: pyarrow, DuckDB and polars skip names starting with a
dot), fsynced, renamed over the final name, and its directory fsynced: a reader or a crash sees the old
file or the new one, never half of one. Writing an hour again reads the file already there and writes the
union of both, deduplicated by the natural key, so a crash between the write and the bookkeeping, or a
late row, never doubles a row.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Rows in a file are sorted by these (then by the rest of the natural key, for a stable order).
SORT_COLUMNS: tuple[str, ...] = ("exchange_timestamp", "sequence")


class ArchiveError(RuntimeError):
    """Writing ``path`` failed; ``cause`` says why (disk full, permission, pyarrow missing)."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"{path}: {cause}")
        self.path = path
        self.cause = cause

    def __reduce__(self) -> tuple[type[ArchiveError], tuple[Path, BaseException]]:
        # Raised in the archive process and handed back to the writer: pickled with its path and cause.
        return ArchiveError, (self.path, self.cause)


@dataclass(frozen=True, slots=True)
class Written:
    """What one archive write left on disk."""

    path: Path
    rows_offered: int  # rows given to this write
    rows_in_file: int  # rows in the file now (the union with what it held before)
    bytes: int


def arrow_type_name(declared: str) -> str:
    """The Parquet column type for an SQLite declared type, by SQLite's affinity rules: INTEGER -> int64,
    REAL -> float64, anything else (TEXT, DATETIME: the seed's ISO strings) -> string."""
    d = declared.upper()
    if "INT" in d:
        return "int64"
    if any(t in d for t in ("REAL", "FLOA", "DOUB")):
        return "float64"
    return "string"


def _pa() -> Any:
    import pyarrow as pa  # optional extra: only an archive needs it

    return pa


def to_arrow(columns: Sequence[tuple[str, str]], batches: Iterable[Sequence[Sequence[object]]]) -> Any:
    """An Arrow table of the rows in ``batches`` (tuples in ``columns`` order; (name, declared type)
    pairs), NULLs kept. Batch by batch: an hour of a busy symbol is ~200k rows, and as Python tuples they
    would take ten times the memory they take as columns."""
    pa = _pa()
    schema = pa.schema([(name, getattr(pa, arrow_type_name(decl))()) for name, decl in columns])
    parts = []
    for rows in batches:
        data = list(zip(*rows, strict=True))
        parts.append(pa.Table.from_arrays([pa.array(v, type=f.type) for v, f in zip(data, schema, strict=True)],
                                          schema=schema))
    return pa.concat_tables(parts) if parts else schema.empty_table()


def _dedupe(table: Any, key: Sequence[str]) -> Any:
    """The first row of each natural key (NULLs compare equal, as COALESCE makes them in the index)."""
    pa = _pa()
    cols = [c for c in key if c in table.column_names]
    if not cols or table.num_rows == 0:
        return table
    idx = table.append_column("__row", pa.array(range(table.num_rows), type=pa.int64()))
    first = idx.group_by(cols, use_threads=False).aggregate([("__row", "min")]).column("__row_min")
    return table.take(first)


def _sort(table: Any, key: Sequence[str]) -> Any:
    order = [c for c in (*SORT_COLUMNS, *key) if c in table.column_names]
    order = list(dict.fromkeys(order))
    return table.sort_by([(c, "ascending") for c in order]) if order else table


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, fsyncing each new entry's parent so that the new
    directories survive a crash too."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        _fsync_dir(d.parent)


def write_file(path: Path, new: Any, key: Sequence[str], fmt: str = "parquet",
               consume: Sequence[Path] = ()) -> Written:
    """Write the Arrow table ``new`` (sorted by SORT_COLUMNS) to ``path`` durably, as Parquet (zstd) or CSV
    (gzip); a file already there, and the files in ``consume`` (the parts of an hour), are merged (union,
    deduplicated by ``key``, older rows winning) and the consumed files removed once ``path`` is durable.
    Raises :class:`ArchiveError` naming the path; nothing is ever half-written, and a crash before the
    removal leaves rows in two files, which the next merge of that hour makes one again."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pa = _pa()
        table = new  # its rows come sorted (ORDER BY exchange_timestamp, sequence)
        olds = [_read(p, fmt, new.schema) for p in (path, *consume) if p.exists()]
        if olds:
            # promote: a column added to SQLite since the old file was written is NULL in its rows
            table = _sort(_dedupe(pa.concat_tables([*olds, new], promote_options="default"), key), key)
        _make_dirs(path.parent)
        if fmt == "csv":
            import pyarrow.csv as pcsv

            with pa.CompressedOutputStream(str(tmp), "gzip") as out:
                pcsv.write_csv(table, out)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        gone = [p for p in consume if p != path]
        for p in gone:
            p.unlink(missing_ok=True)
        if gone:
            _fsync_dir(path.parent)
        return Written(path, new.num_rows, table.num_rows, path.stat().st_size)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # the directory itself refuses us: the error raised says so
            tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception):
            raise ArchiveError(path, exc) from exc
        raise


def _read(path: Path, fmt: str, schema: Any) -> Any:
    """The rows a file already holds (columns it lacks are added by the caller's promote)."""
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pa = _pa()
        with pa.CompressedInputStream(pa.OSFile(str(path)), "gzip") as fh:
            return pcsv.read_csv(fh, convert_options=pcsv.ConvertOptions(column_types=schema))
    import pyarrow.parquet as pq

    return pq.read_table(path)


def read_archive(directory: str | Path) -> Any:
    """Every row under ``directory`` (an ``archive_dir``'s table directory) as one Arrow table, with the
    Hive partition ``date`` as a column (``symbol`` is in the files already)."""
    import pyarrow.dataset as ds

    return ds.dataset(str(directory), format="parquet", partitioning="hive").to_table()
