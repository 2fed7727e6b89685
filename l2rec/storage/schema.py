"""The training table: the seed's columns (names and types kept) plus what a correct recorder needs.

The seed is the ``l2_training_data_practical`` table of the original ``data_ingestor.py`` project
(``create_fresh_database.py``'s 63 columns, plus ``sequence`` and ``exchange_timestamp`` which
``data_ingestor.py`` wrote). Columns the recorder does not compute (``price_impact_*``, ``target_*``:
labels need the future) stay NULL so that downstream code reading them keeps working.
"""

from __future__ import annotations

N_LEVELS = 10

_LEVEL_COLS: list[tuple[str, str]] = []
for _side in ("bid", "ask"):
    for _i in range(1, N_LEVELS + 1):
        _LEVEL_COLS += [(f"{_side}_price_{_i}", "REAL"), (f"{_side}_size_{_i}", "REAL")]

# (name, declared type) exactly as the seed declared them, in the seed's order.
SEED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT"),
    ("timestamp", "DATETIME NOT NULL"),
    ("symbol", "TEXT NOT NULL"),
    ("exchange", "TEXT DEFAULT 'bybit'"),
    *_LEVEL_COLS,
    ("mid_price", "REAL"),
    ("spread", "REAL"),
    ("spread_bps", "REAL"),
    ("total_bid_volume_10", "REAL"),
    ("total_ask_volume_10", "REAL"),
    ("weighted_bid_price", "REAL"),
    ("weighted_ask_price", "REAL"),
    ("order_book_imbalance", "REAL"),
    ("microprice", "REAL"),
    ("price_impact_bid", "REAL"),
    ("price_impact_ask", "REAL"),
    ("target_return_1min", "REAL"),
    ("target_return_5min", "REAL"),
    ("target_volatility", "REAL"),
    ("target_direction", "INTEGER"),
    ("update_id", "INTEGER"),
    ("sequence_id", "INTEGER"),
    ("data_quality_score", "REAL"),
    ("data_source", "TEXT DEFAULT 'live_trading'"),
    ("sequence", "INTEGER"),
    ("exchange_timestamp", "INTEGER"),
)

# Added by this recorder. A migration can only ADD COLUMN, so none is NOT NULL without a default.
ADDED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("cross_sequence", "INTEGER"),
    ("match_timestamp", "INTEGER"),
    ("recv_time_ns", "INTEGER"),
    ("depth", "INTEGER"),
    ("category", "TEXT"),
)

# The columns every row tuple fills, in tuple order (features.make_row builds them in this order).
ROW_COLUMNS: tuple[str, ...] = (
    "timestamp", "symbol", "exchange",
    *(name for name, _ in _LEVEL_COLS),
    "mid_price", "spread", "spread_bps",
    "total_bid_volume_10", "total_ask_volume_10",
    "weighted_bid_price", "weighted_ask_price",
    "order_book_imbalance", "microprice",
    "update_id", "sequence_id", "data_quality_score", "data_source",
    "sequence", "exchange_timestamp",
    "cross_sequence", "match_timestamp", "recv_time_ns", "depth", "category",
)
COL = {name: i for i, name in enumerate(ROW_COLUMNS)}

# One row per book state: Bybit's (u, seq) of a topic identify the state of its book, and ts only says
# when it was pushed. So the key has no timestamp: replaying the same frames adds nothing, a fresh
# snapshot after a reconnect that restates the last row's state (and orderbook.1's 3 s re-push of an
# unchanged book: same u, same seq, new ts) adds nothing either, and a u=1 restart cannot collide (seq
# keeps rising).
NATURAL_KEY: tuple[str, ...] = (
    "exchange", "category", "symbol", "depth", "cross_sequence", "sequence",
)

# Columns every row fills with a value (never NULL). An existing table may declare any other column NOT
# NULL only with a default: otherwise no row of ours could be stored in it (checked at start).
ALWAYS_SET: frozenset[str] = frozenset({
    "timestamp", "symbol", "exchange", "update_id", "data_quality_score", "data_source", "sequence",
    "exchange_timestamp", "depth", "category",
})


def conflict_target() -> str:
    """The natural key as an ``ON CONFLICT`` target: it names the key's unique index (``state_key_index``)."""
    return ", ".join("COALESCE(cross_sequence, -1)" if c == "cross_sequence" else c for c in NATURAL_KEY)


GAPS_TABLE = "l2_gaps"
GAPS_DDL = f"""
CREATE TABLE IF NOT EXISTS {GAPS_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL DEFAULT 'bybit',
    category TEXT NOT NULL,
    topic TEXT NOT NULL,
    symbol TEXT NOT NULL,
    depth INTEGER NOT NULL,
    last_u INTEGER,
    got_u INTEGER,
    reason TEXT NOT NULL,
    detected_at TEXT NOT NULL,
    detected_ns INTEGER NOT NULL,
    recovered_at TEXT,
    recovered_ns INTEGER,
    UNIQUE (category, topic, detected_ns)
)
"""


SESSIONS_TABLE = "l2_sessions"
SESSIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {SESSIONS_TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    shard INTEGER NOT NULL,
    session INTEGER NOT NULL,
    url TEXT NOT NULL,
    topics INTEGER NOT NULL,
    connected_at TEXT NOT NULL,
    connected_ns INTEGER NOT NULL,
    ended_at TEXT,
    ended_ns INTEGER,
    reason TEXT,
    graceful INTEGER,
    UNIQUE (shard, connected_ns)
)
"""


def table_ddl(table: str) -> str:
    cols = ",\n    ".join(f"{n} {t}" for n, t in (*SEED_COLUMNS, *ADDED_COLUMNS))
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {cols}\n)"


# The natural key's unique index, led by symbol and then u, so that each topic appends at the end of its
# own range (as it does in the time index). Time-range reads of a symbol use a second index,
# (symbol, exchange_timestamp): the key no longer holds the time. Measured (200,000 rows in batches of
# 1,000, WAL): 20 symbols 51.5k rows/s with the two indexes vs 50.6k with the earlier single one; 500
# symbols 38.5k vs 44.8k rows/s (+3.7 us a row, -14 %), the second index's pages being the extra cost.
KEY_INDEX_ORDER: tuple[str, ...] = ("symbol", "category", "depth", "sequence", "cross_sequence", "exchange")


def state_key_index(table: str) -> str:
    """The name of the natural key's unique index (one row per book state)."""
    return f"ux_{table}_state_key"


# The unique indexes of earlier versions, whose keys held exchange_timestamp (so a restated book state was
# a row of its own): ``ux_T_natural_key`` (with ``ix_T_symbol_exchange_ts`` beside it), then
# ``ux_T_symbol_exchange_ts_key`` (led by symbol, exchange_timestamp).
def old_key_indexes(table: str) -> tuple[str, str]:
    return f"ux_{table}_natural_key", f"ux_{table}_symbol_exchange_ts_key"


def index_ddl(table: str, existing: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The indexes a table needs, given the names of those it has: the natural key's unique index, and
    an index led by (symbol, exchange_timestamp) for time-range reads. A table made by the previous
    version keeps its ``ux_T_symbol_exchange_ts_key`` as that index (it is led by those two columns, and
    building another would take minutes on a large table)."""
    # COALESCE: option frames carry no seq, and NULLs never collide in a UNIQUE index, so a replay would
    # insert them again.
    cols = ", ".join("COALESCE(cross_sequence, -1)" if c == "cross_sequence" else c for c in KEY_INDEX_ORDER)
    out = [f"CREATE UNIQUE INDEX IF NOT EXISTS {state_key_index(table)} ON {table} ({cols})"]
    if old_key_indexes(table)[1] not in existing:
        out.append(f"CREATE INDEX IF NOT EXISTS ix_{table}_symbol_exchange_ts ON {table} (symbol, exchange_timestamp)")
    return tuple(out)


def superseded_indexes(table: str, existing: frozenset[str]) -> tuple[str, ...]:
    """Indexes an earlier version made that the current ones make redundant: ``ux_T_natural_key`` (its
    columns hold the new key's, so the new key's uniqueness implies its own; keeping it would only cost
    every insert). Dropped once the new key's index exists; no row is touched."""
    old = old_key_indexes(table)[0]
    return (old,) if old in existing else ()


# The columns that hold the book a row was made from: two rows of the same book state hold the same values
# (checked before a migration deletes a restatement, so that it never deletes a row of another state).
BOOK_COLUMNS: tuple[str, ...] = tuple(name for name, _ in _LEVEL_COLS)
