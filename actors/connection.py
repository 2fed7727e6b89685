"""ConnectionActor: one websocket to Bybit; a reader thread receives, stamps and tells the parser.

The actor thread owns control: connect, subscribe (at most 10 args a request, each with a req_id), JSON
ping every ``ping_interval_s``, resubscribe a topic on request, reconnect with capped exponential backoff
and jitter, and on stop a graceful close that still reads (and forwards) every frame the server sent
before its close frame. The reader thread only splits the byte stream into websocket frames
(recorder.ws_frames); it never parses JSON and never logs per frame.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
import websocket

from l2rec.actors.base import RecorderActor, Reporter, handles, tell_later, tell_quietly
from l2rec.messages.control import Begin, ReaderExited, Reconnect, Resubscribe, ServerReply, Tick
from l2rec.messages.frames import RawFrames, SessionEnded, SessionStarted
from l2rec.runtime.config import EX_CONFIG, RecorderConfig
from l2rec.runtime.faults import Faults
from l2rec.supervision.backoff import Backoff
from l2rec.supervision.states import ActorState
from l2rec.venue.protocol import ReplyKind, ping_request, subscribe_requests
from l2rec.venue.refusals import PROBE_PREFIX, RefusalTracker
from l2rec.venue.ws_frames import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, FrameParser, FrameTooLarge

log = logging.getLogger("actors.connection")

_RECV_BYTES = 256 * 1024
UNREACHABLE_AFTER = 3  # failed first connects before the one WARNING that says how to work offline


class ConnectionActor(RecorderActor):
    """Owns the websocket of one shard. Messages: Begin, Tick, Resubscribe, Reconnect, ServerReply,
    ReaderExited."""

    name = "connection"

    def __init__(self, cfg: RecorderConfig, shard_id: int, topics: tuple[str, ...],
                 on_fatal: Callable[..., None], reporter: Reporter, faults: Faults) -> None:
        super().__init__(reporter, faults)
        self.cfg = cfg
        self.shard_id = shard_id
        self.topics = topics
        self.on_fatal = on_fatal
        self.parser: pykka.ActorRef[Any] | None = None
        self.ws: websocket.WebSocket | None = None
        self.reader: threading.Thread | None = None
        self.session_id = 0
        self.backoff = Backoff(cfg.reconnect_delay, cfg.reconnect_delay_max_s)
        self.refusals = RefusalTracker(topics)
        self.failures = 0
        self.stopping = False
        self.next_ping_ns = 0
        self.timer: threading.Timer | None = None
        self.stats: dict[str, int] = {"sessions": 0, "connect_failures": 0, "pings": 0, "pongs": 0,
                                      "resubscribes": 0, "refusals": 0}
        self.connected_since_ns: int | None = None
        self.last_error: str | None = None

    # -- pykka hooks ---------------------------------------------------------------------------------

    @handles(Begin)
    def _on_begin(self, message: Begin) -> None:
        self.parser = message.parser
        self._connect(1)

    @handles(Reconnect)
    def _on_reconnect(self, message: Reconnect) -> None:
        self._connect(message.attempt)

    @handles(Resubscribe)
    def _on_resubscribe(self, message: Resubscribe) -> None:
        self._resubscribe(message.topic)

    def on_stop(self) -> None:
        self.stopping = True
        if self.timer is not None:
            self.timer.cancel()
        self._close_gracefully()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        self.stopping = True
        ws = self.ws
        if ws is not None:
            ws.shutdown()
        self.on_fatal(f"connection actor failed: {exception_value!r}")

    # -- connection lifecycle --------------------------------------------------------------------------

    def _connect(self, attempt: int) -> None:
        if self.stopping or self.ws is not None:
            return
        url = self.cfg.url
        ws = websocket.WebSocket(skip_utf8_validation=True, enable_multithread=True)
        try:
            ws.connect(url, timeout=self.cfg.connect_timeout_s)
        except Exception as exc:
            self.stats["connect_failures"] += 1
            self.last_error = f"connect {url}: {exc!r}"
            if isinstance(exc, websocket.WebSocketBadStatusException) and exc.status_code == 429:
                # Rate limited: reconnecting here would make it worse. The supervisor opens this shard's
                # breaker at once and waits at least Retry-After.
                self.stopping = True
                self.on_fatal(f"HTTP 429 on the websocket handshake: {url}", _retry_after_s(exc))
                return
            if self.stats["connect_failures"] == UNREACHABLE_AFTER and not self.stats["sessions"]:
                log.warning(f"cannot reach {url} ({UNREACHABLE_AFTER} attempts failed; last: {exc}); still "
                            "trying. Without internet, replay a recording (--replay FILE, e.g. tests/data/"
                            "nautilus_trader__2024-12-01_XRPUSDT_ob500.data) or point --ws-url at a local "
                            "server (README: 'Try it without internet')",
                            extra={"fields": {"shard": self.shard_id, "url": url}})
            self._schedule_reconnect(attempt, self.last_error)
            return
        # We ping every ping_interval_s; nothing at all (no data, no pong) for one interval plus the pong
        # timeout means a silent stall: the reader's recv times out and the session is recycled.
        ws.settimeout(self.cfg.ping_interval_s + self.cfg.pong_timeout_s)
        self.ws = ws
        self.session_id += 1
        self.stats["sessions"] += 1
        now = time.time_ns()
        self.connected_since_ns = now
        sid = self.session_id
        assert self.parser is not None
        # Through the parser, so that the features actor sees it in order with the frames.
        self.parser.tell(SessionStarted(sid, url, self.topics, now))
        self.reader = threading.Thread(
            target=_read_loop, args=(ws, sid, self.parser, self.actor_ref, self.cfg.max_frame_bytes),
            name=f"ws-reader-{self.shard_id}-{sid}", daemon=True,
        )
        self.reader.start()
        try:
            for _req_id, req in subscribe_requests("subscribe", self.topics, self.cfg.subscribe_batch_args,
                                                   f"s{self.shard_id}.{sid}"):
                ws.send(req)
        except Exception as exc:
            log.warning("subscribe failed: %r", exc, extra={"fields": {"shard": self.shard_id}})
            ws.shutdown()  # the reader sees the error and reports the session's end
            return
        self.next_ping_ns = now + int(self.cfg.ping_interval_s * 1e9)
        log.info("connected", extra={"fields": {"shard": self.shard_id, "url": url, "session": sid,
                                                "topics": len(self.topics), "attempt": attempt}})

    def _schedule_reconnect(self, attempt: int, reason: str) -> None:
        if self.stopping:
            return
        self.failures += 1
        limit = self.cfg.max_reconnect_attempts
        if limit and self.failures > limit:
            # Crash-only: give up here and let the supervisor decide (it has the circuit breaker).
            raise ConnectionError(f"{self.failures - 1} reconnect attempts failed; last: {reason}")
        delay = self.backoff.delay(self.failures)
        log.warning("reconnect scheduled", extra={"fields": {
            "shard": self.shard_id, "attempt": self.failures, "delay_s": round(delay, 3), "reason": reason}})
        self.timer = tell_later(self.actor_ref, delay, Reconnect(attempt + 1))

    @handles(ReaderExited)
    def _on_reader_exit(self, msg: ReaderExited) -> None:
        if msg.session_id != self.session_id:
            return
        ws, self.ws = self.ws, None
        if ws is not None:
            ws.shutdown()
        assert self.parser is not None
        self.parser.tell(SessionEnded(msg.session_id, msg.reason, time.time_ns(), msg.graceful))
        if self.stopping:
            return
        self.last_error = msg.reason
        log.warning("disconnected", extra={"fields": {"shard": self.shard_id, "session": msg.session_id,
                                                      "reason": msg.reason, "graceful": msg.graceful}})
        if msg.graceful:
            # A server's orderly close (maintenance, rebalancing) is not a failure: reconnect at once.
            self.failures = 0
            self._connect(1)  # on failure it schedules the next attempt itself
            return
        self._schedule_reconnect(1, msg.reason)

    @handles(Tick)
    def _on_tick(self, tick: Tick) -> None:
        self._ping(tick.now_ns)
        self.report(tick.now_ns)

    def _ping(self, now_ns: int) -> None:
        ws = self.ws
        if ws is None or now_ns < self.next_ping_ns:
            return
        self.next_ping_ns = now_ns + int(self.cfg.ping_interval_s * 1e9)
        try:
            ws.send(ping_request(f"p{self.shard_id}.{self.stats['pings']}"))
            self.stats["pings"] += 1
        except Exception as exc:
            ws.shutdown()  # the reader reports the session's end
            self.last_error = f"ping: {exc!r}"

    @handles(ServerReply, fault_point=True)
    def _on_reply(self, reply: ServerReply) -> None:
        if reply.kind is ReplyKind.PONG:
            self.stats["pongs"] += 1
            # A session that answers pings is healthy: the next failure starts the backoff afresh.
            self.failures = 0
        elif reply.kind is ReplyKind.ACK and reply.ok:
            self.failures = 0
        elif not reply.ok:
            self.stats["refusals"] += 1  # the parser logged it, with the topic it names
        if not reply.ok or self.refusals.is_probe(reply.req_id):
            self._audit(reply)

    def _audit(self, reply: ServerReply) -> None:
        """Probe what a refusal left unknown; fail the shard with exit 78 once every topic is refused."""
        refusals = self.refusals
        ws = self.ws
        for topic in refusals.on_reply(self.session_id, reply.ok, reply.req_id, reply.topic, reply.message):
            if ws is None:
                break
            for req_id, req in subscribe_requests("subscribe", (topic,), 1,
                                                  f"{PROBE_PREFIX}{self.shard_id}.{self.session_id}.{topic}"):
                refusals.probe_sent(req_id, topic)
                try:
                    ws.send(req)
                except Exception as exc:
                    ws.shutdown()  # the reader reports the session's end; the next one subscribes afresh
                    self.last_error = f"probe: {exc!r}"
                    return
        if refusals.all_refused:
            self.stopping = True
            why = "; ".join(f"{t}: {m}" for t, m in sorted(refusals.refused.items()))
            self.on_fatal(f"Bybit refused every topic of this connection: {why}", exit_code=EX_CONFIG)

    def _resubscribe(self, topic: str) -> None:
        ws = self.ws
        if ws is None or topic not in self.topics:
            return  # the next session subscribes everything afresh
        self.stats["resubscribes"] += 1
        try:
            for op in ("unsubscribe", "subscribe"):
                for _rid, req in subscribe_requests(op, (topic,), 1, f"r{self.shard_id}.{self.session_id}"):
                    ws.send(req)
        except Exception as exc:
            ws.shutdown()
            self.last_error = f"resubscribe: {exc!r}"

    def _close_gracefully(self) -> None:
        """Send a close frame and keep reading until the server's close frame (or the deadline)."""
        ws, reader = self.ws, self.reader
        if ws is None:
            return
        try:
            ws.send_close(reason=b"shutdown")
        except Exception:  # the socket may already be gone; the reader then exits on its own
            ws.shutdown()
        if reader is not None:
            reader.join(timeout=max(0.5, self.cfg.shutdown_deadline_s / 3))
            if reader.is_alive():
                ws.shutdown()
                reader.join(timeout=2.0)
        ws.shutdown()
        self.ws = None
        if self.parser is not None:
            self.parser.tell(SessionEnded(self.session_id, "shutdown", time.time_ns(), True))

    def status(self) -> dict[str, object]:
        return {**self.stats, **self.base_status(ActorState.STOPPING if self.stopping else ActorState.RUNNING),
                "session": self.session_id, "connected": self.ws is not None,
                "consecutive_failures": self.failures, "last_error": self.last_error,
                "url": self.cfg.url, "topics": len(self.topics), "topics_refused": sorted(self.refusals.refused)}


def _retry_after_s(exc: websocket.WebSocketBadStatusException) -> float:
    headers = {k.lower(): v for k, v in (exc.resp_headers or {}).items()}
    try:
        return max(1.0, float(headers.get("retry-after", "")))
    except ValueError:
        return 60.0  # no usable Retry-After: wait a minute rather than hammer the endpoint


def _read_loop(ws: websocket.WebSocket, session_id: int, parser: pykka.ActorRef[Any],
               owner: pykka.ActorRef[Any], max_frame_bytes: int) -> None:
    """Receive, stamp, tell. Ends on the server's close frame, a socket error or a timeout.

    websocket-client did the handshake; frames are read here straight from its socket (recorder.ws_frames):
    every frame of one ``recv`` shares its receive time and goes to the parser in one message.
    """
    reason = "closed"
    graceful = False
    tell = parser.tell
    sock = ws.sock
    if sock is None:  # closed between the handshake and this thread's start
        tell_quietly(owner, ReaderExited(session_id, "socket closed before reading", False))
        return
    recv = sock.recv
    frames = FrameParser(max_frame_bytes)
    clock = time.time_ns
    try:
        while True:
            data = recv(_RECV_BYTES)
            if not data:
                reason = "socket closed by the peer without a close frame"
                break
            recv_ns = clock()
            batch = []
            closing = None
            for opcode, payload in frames.feed(data):
                if opcode in (OP_TEXT, OP_BINARY):
                    batch.append((recv_ns, payload))
                elif opcode == OP_PING:
                    ws.pong(payload)
                elif opcode == OP_CLOSE:
                    closing = payload
                    break
            if batch:
                tell(RawFrames(session_id, tuple(batch)))
            if closing is not None:
                code = int.from_bytes(closing[:2], "big") if len(closing) >= 2 else None
                reason = f"server close code={code}"
                graceful = code in (None, 1000, 1001)
                if ws.connected:  # the server started the close: answer it, as the RFC asks
                    with contextlib.suppress(Exception):
                        ws.send_close()
                break
    except FrameTooLarge as exc:
        reason = f"oversized frame refused: {exc}"
    except TimeoutError:
        reason = "stall: nothing received (no data, no pong) within ping interval + pong timeout"
    except pykka.ActorDeadError:
        return
    except Exception as exc:
        reason = f"socket error: {exc!r}"
    tell_quietly(owner, ReaderExited(session_id, reason, graceful))
