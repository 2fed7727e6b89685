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

# Replaying the same frames adds nothing; a u=1 restart cannot collide (seq keeps rising); the
# orderbook.1 re-push of an unchanged book (same u, same seq, new ts) is a row of its own.
NATURAL_KEY: tuple[str, ...] = (
    "exchange", "category", "symbol", "depth", "cross_sequence", "sequence", "exchange_timestamp",
)

# Columns every row fills with a value (never NULL). An existing table may declare any other column NOT
# NULL only with a default: otherwise no row of ours could be stored in it (checked at start).
ALWAYS_SET: frozenset[str] = frozenset({
    "timestamp", "symbol", "exchange", "update_id", "data_quality_score", "data_source", "sequence",
    "exchange_timestamp", "depth", "category",
})


def conflict_target() -> str:
    """The natural key as an ``ON CONFLICT`` target: it names the key's unique index (either layout)."""
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


# The natural key's index, ordered so that it is also the (symbol, exchange_timestamp) index users query
# by: one index, not two. Each symbol appends at its own spot of an index, so with hundreds of symbols
# every commit rewrites hundreds of index pages into the WAL; a second index doubled that (and the CPU).
KEY_INDEX_ORDER: tuple[str, ...] = (
    "symbol", "exchange_timestamp", "category", "depth", "sequence", "cross_sequence", "exchange",
)


def index_ddl(table: str, existing: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """The indexes a table needs, given the names of those it has. A table made by an earlier version
    keeps its two indexes (natural key; symbol, exchange_timestamp): rebuilding them would take minutes
    on a large table, and together they do the same job."""
    if f"ux_{table}_natural_key" in existing:
        return (f"CREATE INDEX IF NOT EXISTS ix_{table}_symbol_exchange_ts ON {table} (symbol, exchange_timestamp)",)
    # COALESCE: option frames carry no seq, and NULLs never collide in a UNIQUE index, so a replay would
    # insert them again.
    cols = ", ".join("COALESCE(cross_sequence, -1)" if c == "cross_sequence" else c for c in KEY_INDEX_ORDER)
    return (f"CREATE UNIQUE INDEX IF NOT EXISTS ux_{table}_symbol_exchange_ts_key ON {table} ({cols})",)
