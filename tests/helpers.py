"""Helpers shared by the tests and the benchmark (bench/run.py imports them as ``tests.helpers``): where the
checkout is, how to run the recorder as a user would, how to wait for something, how to read what it wrote.

No pytest here: the benchmark runs without it. ``tests/conftest.py`` re-exports these names.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"

TABLE = "l2_training_data_practical"  # the recorder's rows (the default table name)
GAPS_TABLE = "l2_gaps"  # the recorder's gap records


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.02) -> object:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def supervisor_cmd(*args: str) -> list[str]:
    """``python supervisor.py ARGS`` with this interpreter, as a user runs the recorder."""
    return [sys.executable, str(ROOT / "supervisor.py"), *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any ``L2REC_*`` variable of the caller (the recorder's defaults), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2REC_")}
    env.update(extra)
    return env


def run_supervisor(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python supervisor.py ARGS`` to the end (clean environment, in the checkout); its output as text."""
    return subprocess.run(supervisor_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), cwd=cwd or ROOT)


def query(db: Path, sql: str, args: tuple[Any, ...] = (), timeout: float = 30) -> list[tuple[Any, ...]]:
    """The rows of ``sql`` on the recorder's database ``db``, which it may be writing right now; [] while the
    database or the table does not exist yet."""
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db, timeout=timeout)) as c:
        try:
            return c.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # table not created yet


def count_rows(db: Path, table: str = TABLE) -> int | None:
    """How many rows ``table`` of ``db`` holds; None when the database or the table does not exist."""
    rows = query(db, f"SELECT COUNT(*) FROM {table}")
    return int(rows[0][0]) if rows else None
