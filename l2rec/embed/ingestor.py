"""``DataIngestor``: the recorder embedded in a host process (a trading bot), with the seed's API.

What runs where: ``start()`` runs the same supervision tree as ``python supervisor.py`` (``Root``), in a
thread of the host (``l2rec-root-N``), without signal handlers: the writer and the shards are child
processes (spawn) exactly as under the CLI, with the same restart policy. The rows are made in the shards;
while an update callback is set, the shards also send them up their uplink pipe to the root in batches
(``l2rec.runtime.publish``), and one thread of the host (``l2rec-callbacks-N``) calls the callback
(``l2rec.embed.delivery``). ``stop()`` is the SIGTERM drain.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from l2rec.embed.config import DataIngestorConfig
from l2rec.embed.delivery import Delivery, ErrorCallback, UpdateCallback
from l2rec.embed.errors import ChildRestarted, ConnectionLost, IngestorError, StartFailed, error_from_record
from l2rec.messages.book import RowsPublished
from l2rec.runtime.config import ConfigError
from l2rec.runtime.summary import RunTotals
from l2rec.storage.dburl import redact_url
from l2rec.storage.sink import check_sink

if TYPE_CHECKING:
    from l2rec.processes.root import Root

log = logging.getLogger("l2rec.embed")

_NUMBERS = itertools.count(1)
HEALTH_ASK_TIMEOUT_S = 5.0


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0


def seed_stats(health: Mapping[str, Any], totals: RunTotals | None, final: bool = False) -> dict[str, Any]:
    """The seed's counters from a health dump and the run's totals (every process incarnation counted):
    ``total_updates`` book updates made into rows; ``successful_writes`` rows committed;
    ``failed_writes`` rows that could not be written (refused by the table, lost at a stop, shed under
    backpressure); ``reconnections`` websocket sessions after each shard's first; ``buffer_size`` rows made
    and not yet committed (in the shards' batches and links; 0 once the run ended (``final``): a row not
    committed by then is in ``failed_writes``)."""
    topics: Mapping[str, Mapping[str, Any]] = health.get("topics") or {}
    sessions_by_shard: dict[object, int] = {}
    for t in topics.values():
        shard = t.get("shard")
        sessions_by_shard[shard] = max(sessions_by_shard.get(shard, 0), _int(t.get("sessions")))
    waiting = 0
    for key, actor in (health.get("actors") or {}).items():
        if key.endswith(":features") and isinstance(actor, Mapping):
            link = actor.get("writer_link")
            waiting += _int(actor.get("rows_buffered")) + (_int(link.get("depth_rows")) if isinstance(link, Mapping)
                                                           else 0)
    t_ = totals if totals is not None else RunTotals()
    return {
        "total_updates": sum(_int(t.get("rows")) for t in topics.values()),
        "successful_writes": t_.rows_written,
        "failed_writes": t_.rows_failed + t_.rows_lost + t_.rows_shed,
        "reconnections": sum(max(0, n - 1) for n in sessions_by_shard.values()),
        "buffer_size": 0 if final else waiting,
        "rows_already_present": t_.rows_present,
        "gaps": t_.gaps,
    }


class _Observer:
    """What the root tells this ingestor (runs on the root's threads: quick, never blocking)."""

    def __init__(self, ingestor: DataIngestor) -> None:
        self.ingestor = ingestor

    def rows(self, batch: RowsPublished) -> None:
        self.ingestor._delivery.offer(batch)

    def record(self, record: logging.LogRecord) -> None:
        err = error_from_record(record)
        if err is not None:
            self.ingestor._on_error(err)

    def child_exited(self, name: str, exitcode: int | None, action: str, error: str | None) -> None:
        fields: dict[str, object] = {"child": name, "exitcode": exitcode, "action": action, "error": error}
        if action == "restart":
            self.ingestor._on_error(ChildRestarted(f"{name} exited (code {exitcode}); restarting", fields))
        elif action == "escalate":
            self.ingestor._on_error(IngestorError(f"{name} failed beyond its restart policy; the recorder stops",
                                                  fields))
        self.changed()

    def changed(self) -> None:
        with self.ingestor._cond:
            self.ingestor._cond.notify_all()


class DataIngestor:
    """The seed's ingestor: ``set_update_callback``, ``set_error_callback``, ``start``, ``stop``,
    ``get_stats``, ``is_healthy``; a context manager (``with`` starts it, or raises StartFailed, and stops it).
    One ingestor starts once; several may run in one host (each with its own database)."""

    def __init__(self, config: DataIngestorConfig) -> None:
        self.config = config
        self.number = next(_NUMBERS)
        self._cond = threading.Condition()
        self._lock = threading.Lock()  # start() and stop() one at a time
        self._delivery = Delivery(config.callback_queue, config.recorder.levels_wanted,
                                  f"l2rec-callbacks-{self.number}")
        self._root: Root | None = None
        self._thread: threading.Thread | None = None
        self._state = "new"  # new, starting, running, stopping, stopped, failed
        self._start_problem: str | None = None
        self._last_error: str | None = None
        self._start_attempts = max(1, config.recorder.max_reconnect_attempts)

    # -- callbacks -------------------------------------------------------------------------------------

    def set_update_callback(self, fn: UpdateCallback | None) -> None:
        """``fn(update: L2Update)`` for every book update that becomes a row, in order per topic, on one
        thread of this process. The shards send rows only while a callback is set."""
        self._delivery.on_update = fn
        root = self._root
        if root is not None and root.publish is not None:
            root.publish.value = 1 if fn is not None else 0

    def set_error_callback(self, fn: ErrorCallback | None) -> None:
        """``fn(error: Exception)``, an ``IngestorError`` (see ``l2rec.embed.errors``), on the callback thread;
        ``StartFailed`` and the run's failure at stop on the thread that called start() / stop()."""
        self._delivery.on_error = fn

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the writer and shard processes; True once the writer is up and every shard connected and
        has every topic in sync (or refused by Bybit). False, after calling the error callback with a
        ``StartFailed``, when the database cannot be used, a shard's connection failed
        ``max(1, max_reconnect_attempts)`` times in a row, or nothing was up within ``start_timeout_s``;
        whatever had started is stopped again."""
        with self._lock:
            if self._state != "new":
                return self._state == "running"
            self._state = "starting"
            cfg = self.config.recorder
            try:
                check_sink(cfg)
            except ConfigError as exc:
                self._state = "failed"
                return self._start_failed(f"cannot use the database: {exc}", {"key": exc.key})
            from l2rec.processes.root import Root  # pykka and psutil: paid at start, not at import

            root = Root(cfg, embedded=True, observer=_Observer(self))
            try:
                root.start_metrics()  # here, so that a metrics port in use is a StartFailed naming it
            except ConfigError as exc:
                root.abandon()
                self._state = "failed"
                return self._start_failed(f"cannot serve metrics: {exc}", {"key": exc.key})
            if root.publish is not None:
                root.publish.value = 1 if self._delivery.on_update is not None else 0
            self._root = root
            self._delivery.start()
            self._thread = threading.Thread(target=self._run_root, args=(root,), name=f"l2rec-root-{self.number}",
                                            daemon=True)
            self._thread.start()
            atexit.register(self.stop)
            timeout_s = self.config.start_timeout_s
            with self._cond:
                self._cond.wait_for(lambda: root.ready() or root.exit_code is not None
                                    or self._start_problem is not None, timeout_s)
            if root.ready() and root.exit_code is None:
                self._state = "running"
                log.info("ingestor started", extra={"fields": {
                    "db": redact_url(cfg.db_path), "symbols": ",".join(cfg.symbols), "source": cfg.url}})
                return True
            if self._start_problem is not None:
                why = self._start_problem
            elif root.exit_code is not None:
                why = f"the recorder stopped (exit code {root.exit_code})" + (
                    f": {self._last_error}" if self._last_error else "")
            else:
                why = f"not connected and subscribed within {timeout_s:g} s" + (
                    f"; last error: {self._last_error}" if self._last_error else "")
            self._shutdown()
            self._state = "failed"
            return self._start_failed(why, {"db": redact_url(cfg.db_path), "source": cfg.url})

    def stop(self) -> None:
        """The SIGTERM drain: the shards close their sockets and read until the server's close frame, every
        row is committed, then the writer closes; the updates queued for the callback are delivered.
        Idempotent; also run at interpreter exit."""
        with self._lock:
            if self._state in ("new", "stopped", "failed"):
                self._state = "stopped" if self._state == "new" else self._state
                return
            self._state = "stopping"
            code = self._shutdown()
            self._state = "stopped"
        if code not in (0, None):
            err = IngestorError(f"the recorder stopped with exit code {code}: rows were not stored or a process "
                                f"failed ({self._last_error or 'see the log'})", {"exit_code": code})
            self._call_error_now(err)

    def __enter__(self) -> DataIngestor:
        if not self.start():
            raise StartFailed(self._start_problem or self._last_error or "the ingestor did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- figures ---------------------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """The seed's counters (``total_updates``, ``successful_writes``, ``failed_writes``, ``reconnections``,
        ``buffer_size``; see ``seed_stats``), the callback's (``callback_dropped``, ``callback_delivered``,
        ``callback_errors``), ``running`` and, under ``health``, the full health dump. Figures come from the
        processes' reports, about once a second; after stop() they are final."""
        health, totals = self._health()
        d = self._delivery
        final = self._root is not None and self._root.exit_code is not None
        return {**seed_stats(health, totals, final), "callback_dropped": d.dropped, "callback_delivered": d.delivered,
                "callback_errors": d.callback_errors, "running": self._state == "running",
                "exit_code": self._root.exit_code if self._root is not None else None, "health": health}

    def is_healthy(self) -> bool:
        """Running, every child process alive with its breaker not open, and every topic in sync with a
        message within ``topic_silence_s`` (60 s when that watchdog is off)."""
        if self._state != "running":
            return False
        health, _ = self._health()
        children = health.get("supervisor") or {}
        if not children or any(not c.get("alive") or c.get("breaker") == "open" for c in children.values()):
            return False
        topics = health.get("topics") or {}
        fresh_s = self.config.recorder.topic_silence_s or 60.0
        return bool(topics) and all(
            t.get("synced") and isinstance(t.get("age_s"), int | float) and t["age_s"] <= fresh_s
            for t in topics.values())

    # -- internals -------------------------------------------------------------------------------------

    def _health(self) -> tuple[dict[str, Any], RunTotals | None]:
        root = self._root
        if root is None:
            return {}, None
        return root.snapshot(HEALTH_ASK_TIMEOUT_S)

    def _run_root(self, root: Root) -> None:
        try:
            root.run()
        except Exception:
            log.exception("the recorder's root failed")
            if root.exit_code is None:
                root.exit_code = 1
        finally:
            with self._cond:
                self._cond.notify_all()

    def _shutdown(self) -> int | None:
        """Stop the tree in order, then deliver what the callback has queued; the run's exit code."""
        root, thread = self._root, self._thread
        if root is None or thread is None:
            return None
        root.request_stop()
        cfg = self.config.recorder
        # Root's own deadlines bound the stop (a shard idle for shutdown_deadline_s is given up); this
        # cap only guards against a bug there.
        thread.join(timeout=4 * cfg.shutdown_deadline_s + 60.0)
        if threading.current_thread() is not self._delivery.thread:
            self._delivery.drain(timeout_s=60.0)
        self._delivery.close()
        atexit.unregister(self.stop)
        return root.exit_code

    def _on_error(self, err: IngestorError) -> None:
        """An error from the tree: remembered for start(), queued for the error callback."""
        self._last_error = str(err)
        if self._state == "starting":
            attempt = err.fields.get("attempt")
            if isinstance(err, ConnectionLost) and isinstance(attempt, int) and attempt >= self._start_attempts:
                self._start_problem = f"cannot connect: {err}"
                with self._cond:
                    self._cond.notify_all()
        self._delivery.error(err)

    def _start_failed(self, why: str, fields: dict[str, object]) -> bool:
        log.error(f"ingestor not started: {why}", extra={"fields": fields})
        self._call_error_now(StartFailed(why, fields))
        return False

    def _call_error_now(self, err: IngestorError) -> None:
        fn = self._delivery.on_error
        if fn is None:
            return
        try:
            fn(err)
        except Exception:
            log.exception("the error callback raised")


def create_data_ingestor(config: Mapping[str, object] | DataIngestorConfig) -> DataIngestor:
    """The seed's factory: ``config`` is its ``config_dict`` (any recorder key, e.g. ``ws_url``) or a
    ``DataIngestorConfig``. A bad key or value raises ConfigError naming it; nothing starts here."""
    cfg = config if isinstance(config, DataIngestorConfig) else DataIngestorConfig.from_dict(config)
    return DataIngestor(cfg)
