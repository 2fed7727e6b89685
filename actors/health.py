"""HealthActor (root process): the latest report of every actor, psutil figures per process, the dump."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, cast

import orjson
import psutil

from l2rec.actors.base import RecorderActor, handles
from l2rec.messages.health import (
    ChildInfo,
    DumpHealth,
    HealthRequest,
    MetricsRequest,
    Status,
    SupervisorState,
    TotalsRequest,
)
from l2rec.runtime.progress import ReplayProgress
from l2rec.runtime.summary import MetricsSnapshot, RunTotals, add_topic_counters, metrics_snapshot, run_totals
from l2rec.supervision.states import Role

log = logging.getLogger("actors.health")


class HealthActor(RecorderActor):
    """Runs in the root: keeps the latest status of every actor and writes the dump on request."""

    name = "health"
    # A daemon thread: in a host process that embeds the recorder and exits without stopping it, the
    # interpreter would otherwise wait for this thread before running the atexit hook that stops it.
    use_daemon_thread = True

    def __init__(self, started_ns: int) -> None:
        super().__init__()
        self.started_ns = started_ns
        self.latest: dict[str, Status] = {}
        # The last report of every earlier incarnation (a restarted process counts from zero again).
        self.retired: list[tuple[str, Status]] = []
        self.children: dict[str, ChildInfo] = {}
        self.supervisor: SupervisorState | None = None
        self.procs: dict[int, psutil.Process] = {}
        self.replay_progress = ReplayProgress(log)  # a replay's readers report here; shown on the terminal
        # CPU seconds: the last figure seen of each pid, and per child name what its ended incarnations
        # used (as last seen: psutil cannot read a process that is gone), so the metric never goes back.
        self.cpu_seen: dict[int, float] = {}
        self.cpu_ended: dict[str, float] = {}

    @handles(Status)
    def _on_status(self, message: Status) -> None:
        if message.actor == "replay" and message.shard_id is not None:
            self.replay_progress.on_report(message.shard_id, message.stats)
        key = f"{message.role}:{message.shard_id}:{message.actor}" if message.shard_id is not None \
            else f"{message.role}:{message.actor}"
        previous = self.latest.get(key)
        if previous is not None and previous.pid != message.pid:
            self.retired.append((key, previous))
        self.latest[key] = message

    @handles(TotalsRequest)
    def _on_totals(self, _message: TotalsRequest) -> RunTotals:
        return self.totals()

    def totals(self) -> RunTotals:
        """The run's figures: the last report of every earlier incarnation and of the current ones."""
        return run_totals((st for _, st in self.retired), self.latest.values())

    @handles(HealthRequest)
    def _on_health_request(self, _message: HealthRequest) -> dict[str, object]:
        return self.build()

    @handles(ChildInfo)
    def _on_child(self, message: ChildInfo) -> None:
        previous = self.children.get(message.name)
        if previous is not None and previous.pid != message.pid:
            self.cpu_ended[message.name] = self.cpu_ended.get(message.name, 0.0) + self.cpu_seen.pop(previous.pid, 0.0)
            self.procs.pop(previous.pid, None)
        self.children[message.name] = message

    @handles(MetricsRequest)
    def _on_metrics(self, _message: MetricsRequest) -> MetricsSnapshot:
        snap = metrics_snapshot((st for _, st in self.retired), self.latest.values(),
                                self.supervisor.children if self.supervisor else {}, time.time_ns())
        for name, pid in [("root", os.getpid()), *((n, ch.pid) for n, ch in self.children.items())]:
            usage = self._usage(pid)
            if usage is not None:
                snap.rss_bytes[name] = usage[0]
            # an incarnation that is gone (waiting for its restart) still counts what it used
            cpu = self.cpu_ended.get(name, 0.0) + (usage[1] if usage is not None else self.cpu_seen.get(pid, 0.0))
            snap.cpu_s[name] = cpu
        return snap

    def _usage(self, pid: int) -> tuple[int, float] | None:
        """(resident bytes, CPU seconds user + system) of a live process; None when it is gone."""
        try:
            p = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
            with p.oneshot():
                cpu = sum(p.cpu_times()[:2])
                rss = p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self.procs.pop(pid, None)
            return None
        self.cpu_seen[pid] = cpu
        return rss, cpu

    @handles(SupervisorState)
    def _on_supervisor_state(self, message: SupervisorState) -> None:
        self.supervisor = message

    @handles(DumpHealth)
    def _on_dump(self, message: DumpHealth) -> str:
        return self._dump(message)

    def _proc(self, pid: int) -> dict[str, object]:
        try:
            p = self.procs.get(pid) or self.procs.setdefault(pid, psutil.Process(pid))
            with p.oneshot():
                cpu = self.cpu_seen[pid] = sum(p.cpu_times()[:2])
                return {
                    "pid": pid, "cpu_percent": p.cpu_percent(interval=None),
                    "cpu_s": round(cpu, 3), "rss_bytes": p.memory_info().rss,
                    "threads": p.num_threads(), "open_files": len(p.open_files()),
                    "uptime_s": round(time.time() - p.create_time(), 3),
                }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self.procs.pop(pid, None)
            return {"pid": pid, "alive": False}

    def build(self) -> dict[str, object]:
        now = time.time_ns()
        processes: dict[str, object] = {"root": {"role": Role.ROOT, **self._proc(os.getpid())}}
        for name, ch in self.children.items():
            processes[name] = {"role": ch.role, **self._proc(ch.pid)}
        actors: dict[str, object] = {}
        topics: dict[str, object] = {}
        queues: dict[str, object] = {}
        for key, st in sorted(self.latest.items()):
            stats = dict(st.stats)
            topic_stats = stats.pop("topics", None)
            if isinstance(topic_stats, dict):
                topic_stats = {t: dict(v) for t, v in topic_stats.items()}
                for old_key, old in self.retired:  # counters of this shard's earlier incarnations
                    old_topics = old.stats.get("topics")
                    if old_key == key and isinstance(old_topics, dict):
                        add_topic_counters(topic_stats, old_topics)
                for topic, ts in topic_stats.items():
                    t = dict(ts)
                    recv = t.get("last_recv_ns")
                    t["age_s"] = round((now - recv) / 1e9, 3) if isinstance(recv, int) else None
                    topics[topic] = {"shard": st.shard_id, **t}
            link = stats.get("writer_link")
            if isinstance(link, dict):
                queues[f"shard-{st.shard_id}->writer"] = {
                    "depth": link.get("depth_rows"), "capacity": link.get("capacity_rows"), "unit": "rows",
                    "batches": link.get("depth_batches")}
            # An actor restarts with its process (the shard is the unit of failure): show that child's
            # supervision state next to the actor's own counters.
            child = "writer" if st.role is Role.WRITER else f"shard-{st.shard_id}"
            sup_child = self.supervisor.children.get(child, {}) if self.supervisor else {}
            actors[key] = {"pid": st.pid, "report_age_s": round((now - st.sent_ns) / 1e9, 3),
                           "restarts": sup_child.get("restarts"), "breaker": sup_child.get("breaker"),
                           "next_restart_in_s": sup_child.get("next_restart_in_s"),
                           "process_last_error": sup_child.get("last_error"), **stats}
        sup = self.supervisor
        return {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "uptime_s": round((now - self.started_ns) / 1e9, 3),
            "processes": processes, "actors": actors, "topics": topics,
            "supervisor": sup.children if sup else {}, "queues": queues,
        }

    def _dump(self, req: DumpHealth) -> str:
        dump = self.build()
        tmp = f"{req.path}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(dump, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str))
        os.replace(tmp, req.path)  # readers never see a half-written dump
        topics = cast(dict[str, dict[str, Any]], dump["topics"])  # build() made it so
        processes = cast(dict[str, object], dump["processes"])
        totals = self.totals()
        synced = sum(1 for t in topics.values() if t.get("synced"))
        never = sum(1 for t in topics.values() if t.get("sessions") == 0 and not t.get("frames"))
        summary = (f"health dump written to {req.path}: {len(processes)} processes, "
                   f"{synced}/{len(topics)} topics in sync{f' ({never} never connected)' if never else ''}, "
                   f"{totals.rows_written} rows written this run ({totals.rows_present} already present)")
        log.info(summary, extra={"fields": {"reason": req.reason}})
        return summary
