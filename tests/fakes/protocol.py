"""The Bybit v5 public websocket shapes the fake speaks (linear), as plain data: no I/O, no state.

Requests and their replies as /work/shared/docs/bybit-v5.md describes them: subscribe/unsubscribe acks, the
linear pong, the real refusal texts (``args size >10``, ``Invalid symbol :[topic]``, ``error:handler not
found,topic:...``, ``error:already subscribed,topic:...``), with Bybit's key order; the topics
``orderbook.{1|50|200|1000}.{SYMBOL}`` and their push intervals; the kinds of frame the fake records; and the
RFC 6455 framing load mode writes by hand.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Mapping
from typing import Any

import orjson

from .synthetic import VALID_DEPTHS

HOST = "127.0.0.1"  # never anything else: this is a test fake, it must not listen on the network
DEFAULT_PATH = "/v5/public/linear"

# Bybit's push intervals per depth for linear/spot (orderbook.mdx, current).
DEFAULT_INTERVAL_MS: dict[int, float] = {1: 10.0, 50: 20.0, 200: 100.0, 1000: 200.0}

TOPIC_RE = re.compile(r"orderbook\.(" + "|".join(map(str, VALID_DEPTHS)) + r")\.([^.\s]+)")

KIND_SNAPSHOT = "snapshot"
KIND_DELTA = "delta"
KIND_REPLY = "reply"
KIND_INVALID = "invalid"  # a data frame of a topic whose "type" is neither snapshot nor delta, or not JSON
KIND_EVENT = "event"  # not a frame: a fault that sent nothing (drop, close, stall, ignored unsubscribe)

Reply = dict[str, Any]


def now_ms() -> int:
    """Wall-clock milliseconds: the ``ts`` of a frame."""
    return time.time_ns() // 1_000_000


def dumps(obj: Mapping[str, Any]) -> str:
    """``obj`` as the compact JSON text Bybit sends (orjson: no spaces, keys in insertion order)."""
    return orjson.dumps(obj).decode()


# ------------------------------------------------------------------------------------------------ requests


def parse_request(raw: str | bytes) -> dict[str, Any] | None:
    """A client frame as a JSON object; None when it is not JSON or not an object (a bad request)."""
    try:
        req = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return req if isinstance(req, dict) else None


def reply_req_id(req_id: object) -> str:
    """The ``req_id`` a linear reply carries: "" when none was sent; a non-string id comes back as text."""
    return "" if req_id is None else req_id if isinstance(req_id, str) else orjson.dumps(req_id).decode()


# ------------------------------------------------------------------------------------------------- replies


def pong(conn_id: str, rid: str) -> Reply:
    """The linear reply to ``{"op":"ping"}``."""
    return {"success": True, "ret_msg": "pong", "conn_id": conn_id, "req_id": rid, "op": "ping"}


def ack(conn_id: str, rid: str, op: str) -> Reply:
    """The success reply to a subscribe or unsubscribe request."""
    return {"success": True, "ret_msg": "", "conn_id": conn_id, "req_id": rid, "op": op}


def invalid_op(conn_id: str, rid: str, op: object) -> Reply:
    """The refusal of an unknown (or missing) ``op``; ``op`` is echoed only when it is a string."""
    reply: Reply = {"success": False, "ret_msg": "error:invalid op", "conn_id": conn_id, "req_id": rid}
    if isinstance(op, str):
        reply["op"] = op
    return reply


def args_size_refusal(conn_id: str, op: str, max_args: int) -> Reply:
    """Bybit refuses a request of more than ``max_args`` topics whole, subscribing nothing; no req_id."""
    return {"success": False, "ret_msg": f"args size >{max_args}", "conn_id": conn_id, "op": op}


def topic_refusal(conn_id: str, rid: str, op: str, topic: object, symbols: frozenset[str]) -> Reply | None:
    """The refusal of ``topic`` if it is not an orderbook topic of a known symbol; None when it is one."""
    m = TOPIC_RE.fullmatch(topic) if isinstance(topic, str) else None
    if m is None:
        return {"success": False, "ret_msg": f"error:handler not found,topic:{topic}", "conn_id": conn_id,
                "req_id": rid, "op": op}
    if m.group(2) not in symbols:
        # The real refusal has no req_id (FastMM capture).
        return {"success": False, "ret_msg": f"Invalid symbol :[{topic}]", "conn_id": conn_id, "op": op}
    return None


def already_subscribed(conn_id: str, rid: str, op: str, topic: str) -> Reply:
    """The refusal of a topic the connection is already subscribed to (or that a request names twice)."""
    return {"success": False, "ret_msg": f"error:already subscribed,topic:{topic}", "conn_id": conn_id,
            "req_id": rid, "op": op}


# --------------------------------------------------------------------------------------- websocket framing


def ws_header(n: int) -> bytes:
    """The header of one unmasked, unfragmented RFC 6455 text frame (a server's) of ``n`` payload bytes."""
    if n < 126:
        return bytes((0x81, n))
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n)
    return struct.pack("!BBQ", 0x81, 127, n)


WS_HEADERS = [ws_header(n) for n in range(8192)]  # load mode: no packing per frame


def ws_text(payload: bytes) -> bytes:
    """One text frame, header + payload."""
    return ws_header(len(payload)) + payload
