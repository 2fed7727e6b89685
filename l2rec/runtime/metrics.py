"""``/metrics`` in Prometheus' text format: the metric families built from a
:class:`~l2rec.runtime.summary.MetricsSnapshot`, the collector that asks for one per scrape, and the HTTP
server the root runs on ``metrics_host:metrics_port``.

No ``prometheus_client`` metric objects are updated anywhere: the children already report their counters up
their uplinks about once a second, and the root adds them up over incarnations (``metrics_snapshot``). A
scrape builds the families from that snapshot, so there is no shared multiprocess directory, and a process
that restarts never makes a counter go back.

Imported by the root only when ``metrics_port`` is set (``prometheus_client`` costs ~0.1 s to import).
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from l2rec.runtime.config import ConfigError
from l2rec.runtime.summary import HistogramFigures, MetricsSnapshot
from l2rec.storage.dburl import is_postgres_url

# Every series /metrics serves (the names without the _total/_bucket/... suffixes Prometheus adds), so that
# the ops files in conf/ can be checked against them.
SERIES: tuple[str, ...] = (
    "l2rec_rows", "l2rec_gaps", "l2rec_frames_rejected", "l2rec_topic_synced",
    "l2rec_topic_last_message_age_seconds", "l2rec_reconnects", "l2rec_child_restarts", "l2rec_breaker_open",
    "l2rec_writer_queue_rows", "l2rec_commit_seconds", "l2rec_receive_to_commit_seconds",
    "l2rec_process_resident_memory_bytes", "l2rec_process_cpu_seconds", "l2rec_db_size_bytes",
    "l2rec_db_disk_free_bytes", "l2rec_db_disk_size_bytes", "l2rec_up",
)


def _histogram(name: str, doc: str, h: HistogramFigures) -> HistogramMetricFamily:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(h.bounds_s, h.counts, strict=False):
        running += n
        buckets.append((repr(float(bound)), running))
    buckets.append(("+Inf", running + h.counts[-1]))
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum_s)


def families(snap: MetricsSnapshot) -> list[Metric]:
    """The metric families of ``snap``, in Prometheus' data model (``prometheus_client.core``)."""
    out: list[Metric] = []

    rows = CounterMetricFamily("l2rec_rows", "Rows committed to the training table (inserted: not a row already "
                               "present), per topic", labels=["topic"])
    for topic, n in sorted(snap.rows.items()):
        rows.add_metric([topic], n)
    out.append(rows)
    gaps = CounterMetricFamily("l2rec_gaps", "Rows written to l2_gaps (a topic lost sync, a restart, downtime), "
                               "per topic and reason", labels=["topic", "reason"])
    for (topic, reason), n in sorted(snap.gaps.items()):
        gaps.add_metric([topic, reason], n)
    out.append(gaps)
    rejected = CounterMetricFamily("l2rec_frames_rejected", "Frames the parsers refused (not JSON, bad numbers, "
                                   "too many levels, ...), per reason", labels=["reason"])
    for reason, n in sorted(snap.rejected.items()):
        rejected.add_metric([reason], n)
    out.append(rejected)

    synced = GaugeMetricFamily("l2rec_topic_synced", "1 while the topic's book is in sync (its rows are being "
                               "recorded), else 0", labels=["topic"])
    for topic, ok in sorted(snap.synced.items()):
        synced.add_metric([topic], 1.0 if ok else 0.0)
    out.append(synced)
    age = GaugeMetricFamily("l2rec_topic_last_message_age_seconds", "Seconds since the topic's last message was "
                            "received (+Inf: none yet)", labels=["topic"])
    for topic, seconds in sorted(snap.age_s.items()):
        age.add_metric([topic], seconds)
    out.append(age)

    reconnects = CounterMetricFamily("l2rec_reconnects", "Websocket sessions after the shard's first (its "
                                     "restarts' included)", labels=["shard"])
    for shard, n in sorted(snap.reconnects.items()):
        reconnects.add_metric([shard], n)
    out.append(reconnects)
    restarts = CounterMetricFamily("l2rec_child_restarts", "Restarts of the child process by the supervisor",
                                   labels=["child"])
    for child, n in sorted(snap.restarts.items()):
        restarts.add_metric([child], n)
    out.append(restarts)
    breaker = GaugeMetricFamily("l2rec_breaker_open", "1 while the child's circuit breaker is open (no restart "
                                "until its cooldown ends), else 0", labels=["child"])
    for child, is_open in sorted(snap.breaker_open.items()):
        breaker.add_metric([child], 1.0 if is_open else 0.0)
    out.append(breaker)
    queue = GaugeMetricFamily("l2rec_writer_queue_rows", "Rows in the shard's link to the writer (waiting or not "
                              "yet acknowledged; the bound is writer_queue_rows)", labels=["shard"])
    for shard, n in sorted(snap.queue_rows.items()):
        queue.add_metric([shard], n)
    out.append(queue)

    out.append(_histogram("l2rec_commit_seconds", "Duration of the writer's transactions (one per group of "
                          "batches)", snap.commit))
    out.append(_histogram("l2rec_receive_to_commit_seconds", "From a frame's receive time to the commit of its "
                          "row", snap.recv_to_commit))

    rss = GaugeMetricFamily("l2rec_process_resident_memory_bytes", "Resident memory of each process",
                            labels=["role"])
    for role, n in sorted(snap.rss_bytes.items()):
        rss.add_metric([role], n)
    out.append(rss)
    cpu = CounterMetricFamily("l2rec_process_cpu_seconds", "CPU time (user + system) of each process, every "
                              "incarnation of it", labels=["role"])
    for role, seconds in sorted(snap.cpu_s.items()):
        cpu.add_metric([role], seconds)
    out.append(cpu)

    for name, doc, value in (
            ("l2rec_db_size_bytes", "Size of the SQLite database file and its -wal", snap.db_size_bytes),
            ("l2rec_db_disk_free_bytes", "Bytes free (for the recorder's user) on the file system holding the "
             "database", snap.db_disk_free_bytes),
            ("l2rec_db_disk_size_bytes", "Size of the file system holding the database", snap.db_disk_size_bytes)):
        if value is not None:  # PostgreSQL: no file here to measure
            out.append(GaugeMetricFamily(name, doc, value=value))
    out.append(GaugeMetricFamily("l2rec_up", "1: the recorder's root answered this scrape", value=1))
    return out


def db_file_figures(db_path: str, snap: MetricsSnapshot) -> None:
    """Fill in the database's size (the file and its ``-wal``) and its file system's free and total bytes;
    nothing for a PostgreSQL URL. Read at each scrape: a ``stat`` and a ``statvfs``."""
    if is_postgres_url(db_path):
        return
    size = 0
    for path in (db_path, db_path + "-wal"):
        try:
            size += os.stat(path).st_size
        except OSError:
            continue  # not created yet, or no WAL right now
    snap.db_size_bytes = size
    try:
        usage = shutil.disk_usage(os.path.dirname(os.path.abspath(db_path)))
    except OSError:
        return
    snap.db_disk_free_bytes, snap.db_disk_size_bytes = usage.free, usage.total


class SnapshotCollector(Collector):
    """A collector for a private registry: each scrape calls ``snapshot()`` (the root's figures; None before
    the run started or after it ended) and yields its families."""

    def __init__(self, snapshot: Callable[[], MetricsSnapshot | None]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        """The families of the current snapshot; none while there is none (a scrape then gets an empty page
        rather than an error, and ``l2rec_up`` is absent: ``absent(l2rec_up)`` alerts)."""
        snap = self.snapshot()
        if snap is None:
            return
        yield from families(snap)


@dataclass
class MetricsServer:
    """The running HTTP server (its thread is a daemon) and where it listens."""

    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        """Where to scrape it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and release the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5.0)


def start_metrics_server(host: str, port: int, snapshot: Callable[[], MetricsSnapshot | None]) -> MetricsServer:
    """Listen on ``host:port`` and serve ``/metrics`` from ``snapshot`` on a daemon thread. A port that
    cannot be had (in use, privileged) raises ConfigError naming ``metrics_port``, an address this host
    does not have ``metrics_host``: the recorder then exits 78 before any child starts, never running
    without the metrics it was asked for."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as exc:
        raise ConfigError("metrics_host", host, f"not an address of this host: {exc.strerror or exc}") from None
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError("metrics_host", host, f"not an address of this host: {exc.strerror}") from None
        why = ("is in use by another process" if exc.errno == errno.EADDRINUSE
               else f"cannot be listened on: {exc.strerror or exc}")
        raise ConfigError("metrics_port", port, f"{host}:{port} {why} (choose another metrics_port, or 0 "
                          "for no metrics)") from None
    return MetricsServer(server, thread, host, int(server.server_address[1]))

