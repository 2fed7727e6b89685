"""ConnectionActor: one websocket to Bybit; a reader thread receives, stamps and tells the parser.

The actor thread owns control: connect, subscribe (at most 10 args a request, each with a req_id), JSON
ping every ``ping_interval_s``, resubscribe a topic on request, reconnect with capped exponential backoff
and jitter, and on stop a graceful close that still reads (and forwards) every frame the server sent
before its close frame. The reader thread only splits the byte stream into websocket frames
(recorder.ws_frames); it never parses JSON and never logs per frame.

Backpressure: the reader takes byte credits (``l2rec.venue.credits``) for every message it tells the parser;
they come back once its frames are parsed and applied to the books. A parser or book actor that falls behind
makes the reader wait, not read: the backlog
stays in the socket buffers and TCP slows the sender. Waiting is not a stall (the read timeout only runs
while reading), pings go on (the actor thread sends them), and a waiting reader gives up when the parser
dies or the connection closes the credits at a stop; the frames it held are counted as lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka
import websocket

from l2rec.actors.base import RecorderActor, Reporter, handles, tell_later, tell_quietly
from l2rec.messages.control import Begin, ReaderExited, Reconnect, Resubscribe, ServerReply, StopReason, Tick
from l2rec.messages.frames import RawFrames, SessionEnded, SessionStarted
from l2rec.runtime.config import EX_CONFIG, RecorderConfig
from l2rec.runtime.faults import Faults
from l2rec.supervision.backoff import Backoff
from l2rec.supervision.states import ActorState
from l2rec.venue.credits import ByteCredits
from l2rec.venue.protocol import ReplyKind, ping_request, subscribe_requests
from l2rec.venue.refusals import PROBE_PREFIX, RefusalTracker
from l2rec.venue.ws_frames import OP_BINARY, OP_CLOSE, OP_PING, OP_TEXT, FrameParser, FrameTooLarge, FramingError

log = logging.getLogger("actors.connection")

_RECV_BYTES = 256 * 1024
UNREACHABLE_AFTER = 3  # failed first connects before the one WARNING that says how to work offline
# Bytes told to the parser and not yet parsed, in frames of max_frame_bytes: room for a few of the largest
# frames (a flood of them stays bounded), and over a second of a 25,000 frames/s stream, so that normal
# bursts never make the reader wait.
CREDIT_WINDOW_FRAMES = 4
JOIN_POLL_S = 0.1


@dataclass(slots=True)
class ReaderEnd:
    """How a reader thread ended, read by the actor at a stop (it cannot receive ``ReaderExited`` then)."""

    reason: str | None = None  # None while the reader runs
    graceful: bool = False
    complete: bool = False  # the stream ended (the server's close frame or EOF): nothing sent is unread
    bytes_read: int = 0  # progress while a large frame arrives (no frame is told until it is complete)


class ConnectionActor(RecorderActor):
    """Owns the websocket of one shard. Messages: Begin, Tick, Resubscribe, Reconnect, ServerReply,
    ReaderExited."""

    name = "connection"

    def __init__(self, cfg: RecorderConfig, shard_id: int, topics: tuple[str, ...],
                 on_fatal: Callable[..., None], reporter: Reporter, faults: Faults,
                 credits: ByteCredits | None = None, session_base: int = 0) -> None:
        super().__init__(reporter, faults)
        self.cfg = cfg
        # Shared with the parser, which gives back what it parsed (the shard passes the same object to both).
        self.credits = credits if credits is not None else ByteCredits(CREDIT_WINDOW_FRAMES * cfg.max_frame_bytes)
        self.shard_id = shard_id
        self.topics = topics
        self.on_fatal = on_fatal
        self.parser: pykka.ActorRef[Any] | None = None
        self.ws: websocket.WebSocket | None = None
        self.reader: threading.Thread | None = None
        self.reader_end = ReaderEnd()
        # Session ids stay unique across the shard's incarnations: incarnation * 1,000,000 + n.
        self.session_id = session_base
        self.stop_reason: str | None = None  # set by StopReason: why the shard stops, if not an orderly stop
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

    @handles(StopReason)
    def _on_stop_reason(self, message: StopReason) -> None:
        self.stop_reason = message.reason

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
        self.credits.close()  # a reader waiting for credit must not outlive this actor
        ws = self.ws
        if ws is not None:
            ws.shutdown()
        self.on_fatal(f"connection actor failed: {exception_value!r}")
        super().on_failure(exception_type, exception_value, traceback)  # last: the shard's stop comes first

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
        self.reader_end = ReaderEnd()
        self.reader = threading.Thread(
            target=_read_loop,
            args=(ws, sid, self.parser, self.actor_ref, self.cfg.max_frame_bytes, self.credits, self.reader_end),
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
        tell_quietly(self.parser, SessionEnded(msg.session_id, msg.reason, time.time_ns(), msg.graceful))
        if self.stopping or not self.parser.is_alive():
            return  # a dead parser fails the shard (its main loop sees it): no new session for it
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
        """Send a close frame and keep reading until the server's close frame (or EOF).

        Reading may wait for the parser (byte credits), so the deadline counts from the last progress
        (frames told or parsed), not from the start: a backlog is drained, not cut. A reader idle for
        ``shutdown_deadline_s / 3``, or still busy after ``shutdown_deadline_s`` (a server that streams
        on and never closes), is cut off; the session then ends as a disconnect (a gap for its topics),
        since the server may have sent frames that were never read.
        """
        ws, reader = self.ws, self.reader
        if ws is None:
            return
        try:
            ws.send_close(reason=b"shutdown")
        except Exception:  # the socket may already be gone; the reader then exits on its own
            ws.shutdown()
        if reader is not None and not _join_while_progressing(
                reader, lambda: (self.credits.progress(), self.reader_end.bytes_read),
                idle_s=max(0.5, self.cfg.shutdown_deadline_s / 3), cap_s=max(1.0, self.cfg.shutdown_deadline_s)):
            ws.shutdown()
            self.credits.close()  # a reader waiting for credit gives up now; what it held is counted as lost
            reader.join(timeout=2.0)
        ws.shutdown()
        self.ws = None
        end = self.reader_end
        if reader is not None and not end.complete:
            reason = f"shutdown before the stream ended: {end.reason or 'reader still running'}"
            log.warning("stopped before the server's close frame; the session ends as a disconnect",
                        extra={"fields": {"shard": self.shard_id, "session": self.session_id, "reason": reason}})
        elif self.stop_reason is not None:
            reason = self.stop_reason  # e.g. "root gone": not an orderly shutdown, whatever the socket did
        else:
            reason = "shutdown"
        if self.parser is not None:
            tell_quietly(self.parser, SessionEnded(self.session_id, reason, time.time_ns(), reason == "shutdown"))

    def status(self) -> dict[str, object]:
        return {**self.stats, **self.credits.status(),
                **self.base_status(ActorState.STOPPING if self.stopping else ActorState.RUNNING),
                "session": self.session_id, "connected": self.ws is not None,
                "connected_ns": self.connected_since_ns if self.ws is not None else None,
                "consecutive_failures": self.failures, "last_error": self.last_error,
                "url": self.cfg.url, "topics": len(self.topics), "topics_refused": sorted(self.refusals.refused)}


def _retry_after_s(exc: websocket.WebSocketBadStatusException) -> float:
    headers = {k.lower(): v for k, v in (exc.resp_headers or {}).items()}
    try:
        return max(1.0, float(headers.get("retry-after", "")))
    except ValueError:
        return 60.0  # no usable Retry-After: wait a minute rather than hammer the endpoint


def _join_while_progressing(reader: threading.Thread, progress: Callable[[], object], idle_s: float,
                            cap_s: float) -> bool:
    """Wait for ``reader`` to end while ``progress()`` keeps changing (bytes read, frames told or parsed),
    at most ``cap_s`` in all; True if it ended."""
    t0 = last = time.monotonic()
    mark = progress()
    while True:
        reader.join(JOIN_POLL_S)
        if not reader.is_alive():
            return True
        now = time.monotonic()
        moved = progress()
        if moved != mark:
            mark, last = moved, now
        if now - last > idle_s or now - t0 > cap_s:
            return False


class _ParserGone(Exception):
    """The reader read frames it cannot hand over: the parser died, or the credits were closed."""


def _read_loop(ws: websocket.WebSocket, session_id: int, parser: pykka.ActorRef[Any],
               owner: pykka.ActorRef[Any], max_frame_bytes: int, credits: ByteCredits, end: ReaderEnd) -> None:
    """Receive, stamp, take credit, tell. Ends on the server's close frame, EOF, a socket error or a timeout.

    websocket-client did the handshake; frames are read here straight from its socket (recorder.ws_frames):
    every frame of one ``recv`` shares its receive time and goes to the parser in one message, once the
    byte credits allow it (the parser is not too far behind). While waiting for credit nothing is read.
    """
    reason = "closed"
    graceful = False
    complete = False
    tell = parser.tell
    alive = parser.is_alive
    sock = ws.sock
    if sock is None:  # closed between the handshake and this thread's start
        end.reason = "socket closed before reading"
        tell_quietly(owner, ReaderExited(session_id, end.reason, False))
        return
    recv = sock.recv
    frames = FrameParser(max_frame_bytes)
    clock = time.time_ns

    def hand_over(got: list[tuple[int, bytes]], recv_ns: int) -> bytes | None:
        """Tell the data frames of one read to the parser, answer pings; the close frame's payload, if any."""
        batch = []
        size = 0
        closing = None
        for opcode, payload in got:
            if opcode in (OP_TEXT, OP_BINARY):
                batch.append((recv_ns, payload))
                size += len(payload)
            elif opcode == OP_PING:
                ws.pong(payload)
            elif opcode == OP_CLOSE:
                closing = payload
                break
        if batch:
            credit = credits.take(size, len(batch), alive)
            if credit is None:
                credits.drop(len(batch))
                raise _ParserGone("the connection stopped waiting for the parser" if credits.closed
                                  else "the parser is gone")
            tell(RawFrames(session_id, tuple(batch), credit))
        return closing

    try:
        while True:
            data = recv(_RECV_BYTES)
            end.bytes_read += len(data)
            if not data:
                reason = "socket closed by the peer without a close frame"
                complete = True  # EOF: everything the server sent was read
                break
            recv_ns = clock()
            try:
                got = frames.feed(data)
            except FramingError as exc:
                hand_over(exc.frames, recv_ns)  # the intact frames before the bad one in this read
                raise
            closing = hand_over(got, recv_ns)
            if closing is not None:
                code = int.from_bytes(closing[:2], "big") if len(closing) >= 2 else None
                reason = f"server close code={code}"
                graceful = code in (None, 1000, 1001)
                complete = True
                if ws.connected:  # the server started the close: answer it, as the RFC asks
                    with contextlib.suppress(Exception):
                        ws.send_close()
                break
    except FrameTooLarge as exc:
        reason = f"oversized frame refused: {exc}"
    except TimeoutError:
        reason = "stall: nothing received (no data, no pong) within ping interval + pong timeout"
    except _ParserGone as exc:
        reason = f"{exc}: {credits.frames_dropped} frames read were not handed over"
    except pykka.ActorDeadError:
        reason = "the parser is gone"
    except Exception as exc:
        reason = f"socket error: {exc!r}"
    end.graceful, end.complete, end.reason = graceful, complete, reason
    tell_quietly(owner, ReaderExited(session_id, reason, graceful))
