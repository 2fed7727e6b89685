"""A fake Bybit v5 public websocket server (linear shapes), for tests and for running by hand.

Speaks the request/reply shapes of /work/shared/docs/bybit-v5.md and streams ``orderbook.{1|50|200|1000}.{SYMBOL}``
from a seeded ``SyntheticBook`` per topic, shared by every subscriber. This module is the entry point:
``FakeBybit`` runs the server in a background thread for tests, ``main`` runs it from the command line. The
parts, by role:

* protocol.py -- the wire shapes: topics, requests, replies (acks, pong, refusals), RFC 6455 text frames;
* core.py -- what both modes share: listener, connections, requests, subscriptions, feeds, the record;
* scripted.py -- scripted mode (the default): snapshot then deltas per topic, every frame recorded, faults;
* faults.py -- ``Fault`` (the misbehaviours scripted mode can be told to show), when they fire, what they send;
* load.py -- load mode (``load=True``, ``--load``), for benchmarks: pre-serialised frame rings, counters only.

CLI::

    python tests/fakes/bybit_server.py --port 8765 --symbols BTCUSDT,ETHUSDT --interval-ms 20 \\
        [--max-frames N] [--record frames.jsonl] [--seed 1] [--data-before-ack N] \\
        [--fault "u_jump:topic=orderbook.50.BTCUSDT,after=100,arg=5,once=false" ...] \\
        [--load [--load-ring 256] [--load-tick-ms 5] [--load-keep 0]]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

if __package__:
    from .core import DEFAULT_SYMBOLS, Core, SentFrame
    from .faults import Fault
    from .load import LoadCore
    from .protocol import DEFAULT_PATH, HOST, KIND_EVENT, KIND_REPLY
    from .scripted import ScriptedCore
    from .synthetic import SyntheticBook
else:  # run as a script (python tests/fakes/bybit_server.py): import the parts as the package "fakes"
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from fakes.core import DEFAULT_SYMBOLS, Core, SentFrame
    from fakes.faults import Fault
    from fakes.load import LoadCore
    from fakes.protocol import DEFAULT_PATH, HOST, KIND_EVENT, KIND_REPLY
    from fakes.scripted import ScriptedCore
    from fakes.synthetic import SyntheticBook

__all__ = ["FakeBybit", "Fault", "SentFrame", "main"]

T = TypeVar("T")


def make_core(
    *,
    port: int,
    symbols: Iterable[str],
    interval_ms: float | None,
    max_frames_per_topic: int | None,
    data_before_ack: int,
    seed: int,
    record_path: str | Path | None,
    max_args: int,
    specs: Mapping[str, tuple[float, float]] | None,
    path: str,
    faults: Sequence[Fault] = (),
    load: bool = False,
    load_ring: int = 256,
    load_tick_ms: float = 5.0,
    load_keep: int = 0,
    load_depths: Iterable[int] = (50,),
) -> Core[Any, Any, Any]:
    """The asyncio side of a server in load mode (``LoadCore``, which refuses the scripted-only options)
    or scripted mode (``ScriptedCore``, which ignores the load_* ones)."""
    if load:
        return LoadCore(
            faults=faults, data_before_ack=data_before_ack, record_path=record_path, load_ring=load_ring,
            load_tick_ms=load_tick_ms, load_keep=load_keep, load_depths=load_depths,
            port=port, symbols=symbols, interval_ms=interval_ms, max_frames_per_topic=max_frames_per_topic,
            seed=seed, max_args=max_args, specs=specs, path=path,
        )
    return ScriptedCore(
        faults=faults, data_before_ack=data_before_ack, record_path=record_path,
        port=port, symbols=symbols, interval_ms=interval_ms, max_frames_per_topic=max_frames_per_topic,
        seed=seed, max_args=max_args, specs=specs, path=path,
    )


class FakeBybit:
    """A fake Bybit v5 public websocket server running in a background thread.

    Typical test use::

        with FakeBybit(symbols=["BTCUSDT"], interval_ms=5) as srv:
            with connect(srv.url) as ws:
                ws.send('{"op":"subscribe","args":["orderbook.50.BTCUSDT"]}')
                ...
            srv.wait_for(lambda: srv.connections == 0)
    """

    def __init__(
        self,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        *,
        port: int = 0,
        interval_ms: float | None = None,
        max_frames_per_topic: int | None = None,
        data_before_ack: int | bool = 0,
        seed: int = 0,
        record_path: str | Path | None = None,
        max_args: int = 10,
        specs: Mapping[str, tuple[float, float]] | None = None,
        path: str = DEFAULT_PATH,
        faults: Sequence[Fault] = (),
        load: bool = False,
        load_ring: int = 256,
        load_tick_ms: float = 5.0,
        load_keep: int = 0,
        load_depths: Iterable[int] = (50,),
    ) -> None:
        """Configure; nothing listens until ``start()``.

        ``interval_ms`` None means Bybit's per-depth push interval (1: 10 ms, 50: 20, 200: 100, 1000: 200).
        ``max_frames_per_topic`` caps the data frames (snapshot included) of each subscription; a capped
        subscription stays subscribed and silent. ``data_before_ack`` N > 0 holds a subscribe ack back
        until every topic it subscribed has had N data frames queued (Bybit was seen sending 13 first).
        ``specs`` maps symbol -> (mid, tick) for the synthetic books. ``faults`` are armed from the
        start (see ``Fault``); more can be added with ``inject()``.

        ``load`` True: load mode (load.py): rings of ``load_ring`` frames per topic (built here for
        the depths in ``load_depths``, ~40 us a frame at depth 50; other depths on first subscribe), one
        scheduler tick every ``load_tick_ms``, counters only plus the last ``load_keep`` data frames. In load
        mode ``book()`` is the generator, ``load_ring`` frames ahead of what was sent.
        """
        self._core: Core[Any, Any, Any] = make_core(
            port=port,
            symbols=symbols,
            interval_ms=interval_ms,
            max_frames_per_topic=max_frames_per_topic,
            data_before_ack=int(data_before_ack),
            seed=seed,
            record_path=record_path,
            max_args=max_args,
            specs=specs,
            path=path,
            faults=faults,
            load=load,
            load_ring=load_ring,
            load_tick_ms=load_tick_ms,
            load_keep=load_keep,
            load_depths=load_depths,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --------------------------------------------------------------------------------------- control

    def start(self, timeout: float = 10.0) -> FakeBybit:
        """Start the event loop thread and return once the server is listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-bybit", daemon=True)
        self._thread.start()
        try:
            self._call(self._core.start(), timeout)
        except BaseException:
            self._shutdown_loop(timeout)
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close all connections and the listener, and join the thread. Idempotent."""
        if self._loop is None or self._thread is None:
            return
        try:
            self._call(self._core.close(), timeout)
        finally:
            self._shutdown_loop(timeout)

    def drop_connections(self, timeout: float = 5.0) -> int:
        """Abruptly abort every live connection (no close frame: clients see 1006); returns how many."""

        async def drop() -> int:
            return self._core.drop_connections()

        return self._call(drop(), timeout)

    def inject(self, fault: Fault, timeout: float = 5.0) -> None:
        """Arm ``fault`` now (thread-safe): its ``after_frames`` count starts when this returns.

        Before ``start()`` this is the same as passing it to the constructor."""
        if self._loop is None:
            self._core.arm(fault)
            return

        async def arm() -> None:
            self._core.arm(fault)

        self._call(arm(), timeout)

    def __enter__(self) -> FakeBybit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The bound port (the ephemeral one when constructed with port 0)."""
        return self._core.port

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v5/public/linear``."""
        return self._core.url

    # -------------------------------------------------------------------------------------- observing

    @property
    def connections(self) -> int:
        """Live connections right now."""
        return len(self._core.conns)

    @property
    def total_connections(self) -> int:
        """Connections accepted since start (a reconnect makes this grow)."""
        return self._core.total_connections

    @property
    def bad_requests(self) -> int:
        """Client frames that were not JSON objects or named an unknown op."""
        return self._core.bad_requests

    @property
    def load(self) -> bool:
        """True in load mode."""
        return self._core.load

    def records(self) -> list[SentFrame]:
        """Every frame sent (data and replies) and every fault event, all connections, in send order.

        Load mode: every reply, but only the last ``load_keep`` data frames (none by default)."""
        return self._core.sent_records()

    def sent_frames(self, topic: str | None = None, conn_id: str | None = None) -> list[str]:
        """The exact text of every data frame sent (those of a topic: snapshots, deltas and the frames
        faults injected), in send order, optionally filtered. Replies and events are not included."""
        return [
            r.text
            for r in self.records()
            if r.topic is not None and (topic is None or r.topic == topic)
            and (conn_id is None or r.conn_id == conn_id)
        ]

    def events(self, conn_id: str | None = None) -> list[SentFrame]:
        """The fault events (drop, close, stall, ignored unsubscribe), in the order they happened."""
        return [r for r in self.records() if r.kind == KIND_EVENT and conn_id in (None, r.conn_id)]

    def fault_records(self, kind: str | None = None) -> list[SentFrame]:
        """Every record a fault produced (frames and events), optionally of one fault kind."""
        return [r for r in self.records() if r.fault is not None and kind in (None, r.fault)]

    def stats(self) -> dict[str, int]:
        """How many times each fault kind fired so far (every kind is present; 0 when it never fired).

        "Fired" is when the server decided it (the frame or event is queued then); the record shows when
        it reached the wire. A feed fault (u_jump, u_restart) counts once however many subscribers."""
        return self._core.faults.stats()

    @property
    def faults_fired(self) -> int:
        """Total fault firings so far, all kinds."""
        return sum(self.stats().values())

    def pending_faults(self, timeout: float = 5.0) -> list[Fault]:
        """Faults still armed (once-faults not yet fired, and every repeating fault)."""
        if self._loop is None:
            return [a.fault for a in self._core.faults.armed]

        async def read() -> list[Fault]:
            return [a.fault for a in self._core.faults.armed]

        return self._call(read(), timeout)

    def sent_replies(self, conn_id: str | None = None) -> list[str]:
        """The exact JSON text of every reply (ack, pong, refusal) sent, in send order."""
        return [r.text for r in self.records() if r.kind == KIND_REPLY and conn_id in (None, r.conn_id)]

    def sent_count(self, topic: str | None = None) -> int:
        """How many data frames were sent (optionally for one topic). Cheap in load mode (a counter)."""
        return self._core.data_sent(topic)

    def sent_by_connection(self) -> dict[str, int]:
        """conn_id -> data frames sent on it, every connection that was sent anything, in first-send order."""
        return self._core.sent_by_connection()

    def load_stats(self) -> dict[str, Any]:
        """Load mode: ``frames`` and ``bytes`` written, ``ticks``, ``late_ticks`` (woke more than a tick
        late), ``max_lag_ms``, ``loop_cpu_s`` (CPU time of the server's event-loop thread, which does all
        the sending), ``rings_built``, ``ring_frames``, ``ring_build_s``, ``buffered_bytes`` (written but
        still in the live connections' transport buffers, not yet taken by the kernel), ``connections``.
        Not load mode: {}."""
        return self._core.load_stats()

    def conn_ids(self) -> list[str]:
        """conn_ids of the frames sent so far, each once, in first-send order."""
        return list(self.sent_by_connection())

    def subscriptions(self, timeout: float = 5.0) -> list[tuple[str, str]]:
        """(conn_id, topic) of every live subscription, read on the server's loop."""

        async def read() -> list[tuple[str, str]]:
            return [(c.conn_id, t) for c in self._core.conns for t in c.subs]

        return self._call(read(), timeout)

    def book(self, topic: str) -> SyntheticBook | None:
        """The synthetic book behind ``topic`` (None for an unknown topic). Read it only while the feed
        is idle (no subscriber receiving), e.g. after ``max_frames_per_topic`` was reached."""
        feed = self._core.feeds.get(topic)
        return feed.book if feed is not None else None

    @staticmethod
    def wait_for(predicate: Callable[[], T], timeout: float = 5.0, poll: float = 0.005) -> T:
        """Poll ``predicate`` until it returns something truthy and return that; ``TimeoutError`` at the
        deadline. Use this instead of sleeping in tests."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s")
            time.sleep(poll)

    # -------------------------------------------------------------------------------------- internal

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _shutdown_loop(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()



# ------------------------------------------------------------------------------------------------- CLI


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fake Bybit v5 public websocket server (127.0.0.1 only).")
    p.add_argument("--port", type=int, default=8765, help="TCP port; 0 picks a free one (default 8765)")
    p.add_argument("--symbols", default=",".join(DEFAULT_SYMBOLS), help="comma-separated known symbols")
    p.add_argument("--interval-ms", type=float, default=None,
                   help="delta push interval for every depth (default: Bybit's, 20 ms for depth 50)")
    p.add_argument("--max-frames", type=int, default=None, help="data frames per subscription, then silence")
    p.add_argument("--record", default=None, help="append every data frame sent to this JSONL file")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic books")
    p.add_argument("--data-before-ack", type=int, default=0,
                   help="send this many data frames of each new subscription before its ack")
    p.add_argument("--path", default=DEFAULT_PATH, help="path printed in the URL (any path is accepted)")
    p.add_argument("--fault", action="append", default=[], type=Fault.parse, metavar="SPEC",
                   help='arm a fault: "kind[:topic=T,after=N,arg=X,once=false]"; repeatable')
    p.add_argument("--load", action="store_true",
                   help="load mode: pre-serialised frame rings, batched writes, counters only (benchmarks)")
    p.add_argument("--load-ring", type=int, default=256, help="load mode: frames per topic ring (default 256)")
    p.add_argument("--load-tick-ms", type=float, default=5.0, help="load mode: scheduler tick (default 5 ms)")
    p.add_argument("--load-keep", type=int, default=0, help="load mode: data frames kept in memory (default 0)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the fake server until Ctrl-C; prints the URL to connect to on stdout."""
    args = _parse_args(argv)
    symbols = [s.strip() for s in args.symbols.split(",") if s.strip()]
    core = make_core(
        port=args.port,
        symbols=symbols,
        interval_ms=args.interval_ms,
        max_frames_per_topic=args.max_frames,
        data_before_ack=args.data_before_ack,
        seed=args.seed,
        record_path=args.record,
        max_args=10,
        specs=None,
        path=args.path,
        faults=args.fault,
        load=args.load,
        load_ring=args.load_ring,
        load_tick_ms=args.load_tick_ms,
        load_keep=args.load_keep,
    )

    async def run() -> None:
        await core.start()
        try:
            print(core.url, flush=True)
            print(f"symbols: {', '.join(sorted(core.symbols))}; "
                  f"try: {{\"req_id\":\"1\",\"op\":\"subscribe\",\"args\":[\"orderbook.50.{symbols[0]}\"]}}",
                  file=sys.stderr, flush=True)
            await asyncio.Event().wait()  # until cancelled by Ctrl-C
        finally:
            await core.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"cannot listen on {HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1
    n = core.data_sent()
    print(f"stopped; {n} data frames sent over {core.total_connections} connections", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
