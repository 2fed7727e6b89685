"""A minimal client of the fake Bybit server, for the fake's own tests (tests/test_fake_*.py): send requests,
receive frames and replies with deadlines, a client-side book that checks every invariant the real feed shows,
and the fake started from its command line. Every wait has a deadline (recv timeouts); no sleeps."""

from __future__ import annotations

import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from tests.fakes.bybit_server import FakeBybit

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 3.0
OB50 = "orderbook.50.BTCUSDT"


def send(ws: ClientConnection, obj: dict[str, Any]) -> None:
    ws.send(orjson.dumps(obj).decode())


def recv_text(ws: ClientConnection, timeout: float = TIMEOUT) -> str:
    text = ws.recv(timeout=timeout)
    assert isinstance(text, str)  # Bybit sends text frames
    return text


def recv(ws: ClientConnection, timeout: float = TIMEOUT) -> dict[str, Any]:
    return orjson.loads(recv_text(ws, timeout))


def recv_until(
    ws: ClientConnection, pred: Callable[[dict[str, Any]], bool], timeout: float = TIMEOUT
) -> tuple[list[str], dict[str, Any]]:
    """Frames received before the first one matching ``pred`` (raw text), and that one (parsed)."""
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        text = recv_text(ws, max(0.01, deadline - time.monotonic()))
        msg = orjson.loads(text)
        if pred(msg):
            return seen, msg
        seen.append(text)


def recv_data(ws: ClientConnection, n: int, timeout: float = TIMEOUT) -> list[str]:
    """The next ``n`` data frames (raw text); fails on any reply in between."""
    deadline = time.monotonic() + timeout
    out: list[str] = []
    while len(out) < n:
        text = recv_text(ws, max(0.01, deadline - time.monotonic()))
        assert '"topic"' in text, text
        out.append(text)
    return out


def is_reply(op: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: "topic" not in m and m.get("op") == op


def assert_next_is_pong(ws: ClientConnection) -> None:
    """Ping and require the pong to be the very next frame: proves nothing else was queued before it."""
    send(ws, {"req_id": "probe", "op": "ping"})
    msg = recv(ws)
    assert msg.get("ret_msg") == "pong", msg


class Replay:
    """A minimal client-side book that checks every invariant the real feed shows."""

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.u: int | None = None
        self.seq: int | None = None
        self.inserts = self.deletes = self.updates = self.snapshots = 0

    def apply(self, msg: dict[str, Any]) -> None:
        d = msg["data"]
        assert isinstance(msg["ts"], int) and isinstance(msg["cts"], int) and msg["cts"] <= msg["ts"]
        if msg["type"] == "snapshot":
            if self.u is not None:
                assert d["u"] >= self.u  # a resubscribe continues the counter
            self.bids = {float(p): float(s) for p, s in d["b"]}
            self.asks = {float(p): float(s) for p, s in d["a"]}
            assert [float(p) for p, _ in d["b"]] == sorted(self.bids, reverse=True)
            assert [float(p) for p, _ in d["a"]] == sorted(self.asks)
            self.snapshots += 1
        else:
            assert msg["type"] == "delta"
            assert self.u is not None, "delta before any snapshot"
            assert d["u"] == self.u + 1
            for side, book in (("b", self.bids), ("a", self.asks)):
                for p, s in d[side]:
                    price = float(p)
                    if s == "0":
                        assert price in book, f"orphan delete {p}"
                        del book[price]
                        self.deletes += 1
                    elif price in book:
                        self.updates += 1
                        book[price] = float(s)
                    else:
                        self.inserts += 1
                        book[price] = float(s)
        if self.seq is not None:
            assert d["seq"] >= self.seq if msg["type"] == "snapshot" else d["seq"] > self.seq
        self.u, self.seq = d["u"], d["seq"]
        assert len(self.bids) == self.depth and len(self.asks) == self.depth
        assert max(self.bids) < min(self.asks), "crossed or locked"
        assert all(s > 0 for s in self.bids.values()) and all(s > 0 for s in self.asks.values())

    def top(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


def u_of(text: str) -> int:
    return orjson.loads(text)["data"]["u"]


def open_ws(srv: FakeBybit, **kw: Any) -> ClientConnection:
    """A client connection without receive flow control: these tests stop reading fast streams for a
    while, and a paused reader would not see the server's close reply (a 10 s close timeout)."""
    return connect(srv.url, open_timeout=TIMEOUT, max_queue=None, **kw)


def subscribe(ws: ClientConnection, *topics: str) -> dict[str, Any]:
    send(ws, {"op": "subscribe", "args": list(topics)})
    _, ack = recv_until(ws, is_reply("subscribe"))
    assert ack["success"] is True, ack
    return ack


def start_cli(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Run the fake from its command line, as a person would; returns the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "tests/fakes/bybit_server.py", "--port", "0", "--symbols", "ETHUSDT", "--interval-ms", "5",
         *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout=10.0):
        proc.kill()
        proc.wait()
        raise AssertionError("no URL printed")
    return proc, proc.stdout.readline().strip()
