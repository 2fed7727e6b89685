"""What a run did, counted over every process incarnation: the one-line summary at exit, the exit code of
a replay, the topic counters of the health dump, and the figures ``/metrics`` serves.

Each process reports its counters since it started; a restarted shard or writer starts again from zero.
The root keeps the last report of every incarnation, and these functions add them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from l2rec.messages.health import Status
from l2rec.runtime.buckets import COMMIT_BUCKETS_S, RECV_TO_COMMIT_BUCKETS_S, add_counts
from l2rec.supervision.states import Role

# Per-topic counters of the book keeper that add up across incarnations (the rest are states).
TOPIC_COUNTERS: tuple[str, ...] = ("frames", "rows", "stale", "in_gap", "gaps", "resets", "rejected",
                                   "too_many_levels", "orphan_deletes", "restated", "unaccounted", "sessions")


@dataclass(slots=True)
class RunTotals:
    """The run's figures; ``rows_present`` are rows offered that the table already held (a replay run
    twice, a batch resent after a writer restart)."""

    frames: int = 0  # frames the parsers saw
    book_frames: int = 0  # order book frames usable (valid, and not filtered out)
    filtered: int = 0  # replay: frames of topics that --symbols/--depth left out
    rejected: dict[str, int] = field(default_factory=dict)  # frames refused, by reason
    rows_written: int = 0
    rows_offered: int = 0
    rows_failed: int = 0  # rows the table refused: not stored
    rows_shed: int = 0  # live backpressure: rows dropped (each is a gap)
    rows_lost: int = 0  # rows a shard could not hand to the writer before it had to stop
    frames_lost: int = 0  # frames read from the socket but never parsed (an actor stuck or dead at a stop)
    # Lost at the run's own stop (the last incarnations): what the exit code must say. A crashed
    # incarnation's losses are inside its shard_restart gap (and lost_at_stop gaps) already.
    lost_at_final_stop: int = 0
    gaps: int = 0
    topics: tuple[str, ...] = ()

    @property
    def not_stored(self) -> bool:
        """Rows the table refused, or rows and frames lost at the run's own stop: the run was not clean."""
        return self.rows_failed + self.lost_at_final_stop > 0

    @property
    def rows_present(self) -> int:
        return max(0, self.rows_offered - self.rows_written - self.rows_failed)

    def line(self) -> str:
        """One line for the log and the terminal."""
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        out = (f"frames read {self.frames}, usable {self.book_frames}, rows written {self.rows_written}, "
               f"already present {self.rows_present}, not stored {self.rows_failed + self.rows_lost}, "
               f"rejected frames: {rejected}, gaps {self.gaps}")
        if self.filtered:
            out += f", filtered out {self.filtered}"
        if self.frames_lost:
            out += f", frames lost at stop {self.frames_lost}"
        if self.rows_shed:
            out += f", rows shed under backpressure {self.rows_shed}"
        topics = ", ".join(self.topics) if len(self.topics) <= 5 else f"{len(self.topics)} topics"
        return out + f"; topics: {topics or 'none'}"


def _int(stats: Mapping[str, object], key: str) -> int:
    value = stats.get(key, 0)
    return value if isinstance(value, int) else 0


def run_totals(earlier: Iterable[Status], latest: Iterable[Status]) -> RunTotals:
    """Add up the last report of every incarnation of every actor (``earlier``: of incarnations that
    ended before the run's stop; ``latest``: of the last ones)."""
    t = RunTotals()
    topics: set[str] = set()
    latest = list(latest)
    for st in latest:
        if st.actor == "drain":
            t.lost_at_final_stop += _int(st.stats, "rows_lost") + _int(st.stats, "frames_lost")
    for st in [*earlier, *latest]:
        s = st.stats
        if st.role is Role.WRITER and st.actor == "writer":
            t.rows_written += _int(s, "rows_committed")
            t.rows_offered += _int(s, "rows_offered")
            t.rows_failed += _int(s, "rows_failed")
            t.gaps += _int(s, "gaps_written")
        elif st.actor == "parser":
            t.frames += _int(s, "frames")
            t.book_frames += _int(s, "book")
            t.filtered += _int(s, "filtered")
            for key, value in s.items():
                if key.startswith("reject:") and isinstance(value, int) and value:
                    reason = key[len("reject:"):]
                    t.rejected[reason] = t.rejected.get(reason, 0) + value
        elif st.actor == "drain":
            t.rows_lost += _int(s, "rows_lost")
            t.frames_lost += _int(s, "frames_lost")
        elif st.actor == "features":
            t.rows_shed += _int(s, "rows_shed")
            per_topic = s.get("topics")
            if isinstance(per_topic, dict):
                topics.update(per_topic)
    t.topics = tuple(sorted(topics))
    return t


def add_topic_counters(into: dict[str, dict[str, object]], earlier: Mapping[str, Mapping[str, object]]) -> None:
    """Add an earlier incarnation's per-topic counters to the current ones (topics it had and the current
    one has not yet are added as they were)."""
    for topic, old in earlier.items():
        cur = into.get(topic)
        if cur is None:
            into[topic] = dict(old)
            continue
        for key in TOPIC_COUNTERS:
            a, b = cur.get(key), old.get(key)
            if isinstance(a, int) and isinstance(b, int):
                cur[key] = a + b


@dataclass(slots=True)
class HistogramFigures:
    """A histogram added up over incarnations: ``counts[i]`` observations in bucket i (not cumulative; the
    last bucket is above every bound), their sum in seconds."""

    bounds_s: tuple[float, ...]
    counts: list[int]
    sum_s: float = 0.0


@dataclass(slots=True)
class MetricsSnapshot:
    """What ``/metrics`` serves, at one moment: the counters added up over every incarnation (a restarted
    process counts from zero again), the gauges as the latest reports have them. Label values are the
    keys: a topic (``orderbook.50.BTCUSDT``), a shard's number (``"0"``), a child process's name
    (``writer``, ``shard-0``), a process's role (``root``, ``writer``, ``shard-0``)."""

    rows: dict[str, int] = field(default_factory=dict)  # topic -> rows committed (inserted)
    gaps: dict[tuple[str, str], int] = field(default_factory=dict)  # (topic, reason) -> rows of l2_gaps
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> frames refused by the parsers
    synced: dict[str, bool] = field(default_factory=dict)  # topic -> its book in sync (its process alive)
    age_s: dict[str, float] = field(default_factory=dict)  # topic -> seconds since its last message (inf: none)
    reconnects: dict[str, int] = field(default_factory=dict)  # shard -> websocket sessions after its first
    restarts: dict[str, int] = field(default_factory=dict)  # child -> restarts by the supervisor
    breaker_open: dict[str, bool] = field(default_factory=dict)  # child -> its circuit breaker is open
    queue_rows: dict[str, int] = field(default_factory=dict)  # shard -> rows in its link to the writer
    commit: HistogramFigures = field(default_factory=lambda: HistogramFigures(COMMIT_BUCKETS_S,
                                                                                [0] * (len(COMMIT_BUCKETS_S) + 1)))
    recv_to_commit: HistogramFigures = field(default_factory=lambda: HistogramFigures(
        RECV_TO_COMMIT_BUCKETS_S, [0] * (len(RECV_TO_COMMIT_BUCKETS_S) + 1)))
    rss_bytes: dict[str, int] = field(default_factory=dict)  # role -> resident memory
    cpu_s: dict[str, float] = field(default_factory=dict)  # role -> CPU seconds, every incarnation of it
    db_size_bytes: int | None = None  # SQLite: the file and its -wal (None: PostgreSQL, or not there yet)
    db_disk_free_bytes: int | None = None  # the file system holding the database: free for this user
    db_disk_size_bytes: int | None = None  # ... and its size


def _shard_name(st: Status) -> str:
    return f"shard-{st.shard_id}"


def metrics_snapshot(earlier: Iterable[Status], latest: Iterable[Status],
                     supervisor: Mapping[str, Mapping[str, object]], now_ns: int) -> MetricsSnapshot:
    """Build the figures of ``/metrics`` from the last report of every earlier incarnation of every actor
    (``earlier``), the latest reports (``latest``) and the supervisor's view of each child (``supervisor``:
    ``alive``, ``restarts``, ``breaker`` per child name, as the root sends it to the HealthActor).

    Counters (rows, gaps, rejected frames, reconnects, the histograms) add every incarnation's last
    report to the current one's, as ``run_totals`` does, so they never go back when a process restarts.
    A topic of a shard that is not alive is not in sync, whatever its last report said."""
    snap = MetricsSnapshot()
    latest = list(latest)
    sessions: dict[str, int] = {}
    for st in [*earlier, *latest]:
        s = st.stats
        if st.role is Role.WRITER and st.actor == "writer":
            rows = s.get("rows_by_topic")
            if isinstance(rows, dict):
                for topic, n in rows.items():
                    if isinstance(n, int):
                        snap.rows[topic] = snap.rows.get(topic, 0) + n
            gaps = s.get("gaps_by_topic")
            if isinstance(gaps, dict):
                for topic, reasons in gaps.items():
                    if isinstance(reasons, dict):
                        for reason, n in reasons.items():
                            if isinstance(n, int):
                                snap.gaps[(topic, reason)] = snap.gaps.get((topic, reason), 0) + n
            snap.commit.sum_s += add_counts(snap.commit.counts, s.get("commit_hist"))
            snap.recv_to_commit.sum_s += add_counts(snap.recv_to_commit.counts, s.get("recv_to_commit_hist"))
        elif st.actor == "parser":
            for key, value in s.items():
                if key.startswith("reject:") and isinstance(value, int):
                    reason = key[len("reject:"):]
                    snap.rejected[reason] = snap.rejected.get(reason, 0) + value
        elif st.actor == "connection" and st.shard_id is not None:
            shard = str(st.shard_id)
            sessions[shard] = sessions.get(shard, 0) + _int(s, "sessions")
    # the first session of each shard is the connection, every later one (a process restart's too) a reconnect
    snap.reconnects = {shard: max(0, n - 1) for shard, n in sessions.items()}
    for name, child in supervisor.items():
        snap.restarts[name] = _int(child, "restarts")
        snap.breaker_open[name] = child.get("breaker") == "open"
    for st in latest:
        if st.actor != "features" or st.shard_id is None:
            continue
        # A child not yet in the supervisor's view (the first second of the run) counts as alive.
        alive = bool(supervisor.get(_shard_name(st), {}).get("alive", True))
        topics = st.stats.get("topics")
        if isinstance(topics, dict):
            for topic, t in topics.items():
                if not isinstance(t, dict):
                    continue
                snap.synced[topic] = alive and bool(t.get("synced"))
                recv = t.get("last_recv_ns")
                snap.age_s[topic] = max(0.0, (now_ns - recv) / 1e9) if isinstance(recv, int) else float("inf")
        link = st.stats.get("writer_link")
        depth = link.get("depth_rows") if isinstance(link, dict) else None
        # a dead shard's link died with it (what it held is resent or is a gap): nothing waits in it
        snap.queue_rows[str(st.shard_id)] = depth if alive and isinstance(depth, int) else 0
    return snap
