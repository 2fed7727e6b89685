"""What a run did, counted over every process incarnation: the one-line summary at exit, the exit code of
a replay, and the topic counters of the health dump.

Each process reports its counters since it started; a restarted shard or writer starts again from zero.
The root keeps the last report of every incarnation, and these functions add them up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from l2rec.messages.health import Status
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
