from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"


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
    return [sys.executable, str(ROOT / "supervisor.py"), *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("L2REC_")}
    env.update(extra)
    return env


def run_supervisor(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(supervisor_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env(), cwd=cwd or ROOT)


@pytest.fixture
def data_copy(tmp_path: Path) -> Callable[[str], Path]:
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copy(DATA / name, dst)
        return dst
    return copy
