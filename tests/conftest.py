from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

try:
    from tests.fakes.bybit_server import FakeBybit
    from tests.helpers import DATA, ROOT, clean_env, run_supervisor, supervisor_cmd, wait_for
except ModuleNotFoundError:  # plain `pytest`: tests/ is on sys.path (no __init__.py), the repo root is not
    from fakes.bybit_server import FakeBybit  # type: ignore[no-redef]
    from helpers import DATA, ROOT, clean_env, run_supervisor, supervisor_cmd, wait_for  # type: ignore[no-redef]

# Imported from here by tests written before tests/helpers.py existed; new code imports tests.helpers.
__all__ = ["DATA", "ROOT", "clean_env", "run_supervisor", "supervisor_cmd", "wait_for"]


@pytest.fixture
def data_copy(tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copy(DATA / name, dst)
        return dst
    return copy


@pytest.fixture
def server() -> Iterator[FakeBybit]:
    """A fake Bybit server for the tests of the fake itself (the end-to-end modules define their own)."""
    with FakeBybit(symbols=["BTCUSDT", "ETHUSDT"], interval_ms=2) as srv:
        yield srv
