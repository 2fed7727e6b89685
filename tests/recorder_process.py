"""Runs ``python supervisor.py`` as a user would, against the fake Bybit server, and reads what it wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from tests.helpers import ROOT, TABLE, clean_env, query, supervisor_cmd, wait_for

Key = tuple[str, int, int]


def frame_key(text: str) -> Key:
    """(symbol, u, ts) of a frame the server sent: what identifies its row."""
    m = json.loads(text)
    return m["data"]["s"], m["data"]["u"], m["ts"]


def frame_keys(texts: list[str]) -> set[Key]:
    return {frame_key(t) for t in texts}


class RecorderProcess:
    def __init__(self, tmp: Path, url: str, symbols: str, *extra: str, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.db = tmp / "live.db"
        self.log_file = tmp / "recorder.log"
        self.health_file = tmp / "health.json"
        self.stderr_path = tmp / "stderr.txt"
        self.stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen(
            supervisor_cmd("--ws-url", url, "--symbols", symbols, "--db", str(self.db), "--log-file",
                           str(self.log_file), "--health-file", str(self.health_file), *extra),
            cwd=ROOT, env=clean_env(**(env or {})), stdout=subprocess.DEVNULL, stderr=self.stderr,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.stderr.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.stderr.close()

    def logs(self) -> list[dict[str, object]]:
        if not self.log_file.exists():
            return []
        out = []
        for line in self.log_file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written right now
        return out

    def log_events(self, event: str) -> list[dict[str, object]]:
        return [r for r in self.logs() if r.get("event") == event]

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return query(self.db, sql, args)

    def row_keys(self) -> set[Key]:
        return set(self.query(f"SELECT symbol, sequence, exchange_timestamp FROM {TABLE}"))

    def rows_by_key(self) -> dict[tuple, dict[str, object]]:
        """Every row of the table as a column -> value dict, keyed by (symbol, sequence, exchange_timestamp)."""
        cols = [r[1] for r in self.query(f"PRAGMA table_info({TABLE})")]
        out = {}
        for row in self.query(f"SELECT * FROM {TABLE}"):
            d = dict(zip(cols, row, strict=True))
            out[(d["symbol"], d["sequence"], d["exchange_timestamp"])] = d
        return out

    def row_count(self) -> int:
        rows = self.query(f"SELECT COUNT(*) FROM {TABLE}")
        return rows[0][0] if rows else 0

    def wait_rows(self, n: int, timeout: float = 60.0) -> None:
        wait_for(lambda: self.row_count() >= n, timeout, f"{n} rows (have {self.row_count()})")

    def dump(self, timeout: float = 30.0) -> dict[str, object]:
        """Ask for the health dump with SIGUSR1 and read it."""
        if self.health_file.exists():
            self.health_file.unlink()
        self.signal(signal.SIGUSR1)
        wait_for(self.health_file.exists, timeout, "the health dump")
        return json.loads(self.health_file.read_text())

    def child_pid(self, name: str) -> int:
        return int(self.dump()["processes"][name]["pid"])  # type: ignore[index]

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")
