"""What every actor and process reports to the root's HealthActor (about once a second)."""

from __future__ import annotations

from dataclasses import dataclass

from l2rec.supervision.states import Role


@dataclass(frozen=True, slots=True)
class Status:
    """A point-in-time report. ``stats`` is built fresh for each report and never changed after."""

    role: Role
    actor: str  # "connection" | "parser" | "features" | "replay" | "writer"
    shard_id: int | None
    pid: int
    sent_ns: int
    stats: dict[str, object]


@dataclass(frozen=True, slots=True)
class DumpHealth:
    """Root -> HealthActor: write the health dump to ``path`` (requested by SIGUSR1)."""

    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ChildInfo:
    """Root -> HealthActor: a child process (re)started."""

    name: str
    role: Role
    pid: int
    started_ns: int


@dataclass(frozen=True, slots=True)
class SupervisorState:
    """Root -> HealthActor: what the supervisor knows of each child (restarts, breaker, last error)."""

    children: dict[str, dict[str, object]]


@dataclass(frozen=True, slots=True)
class TotalsRequest:
    """Root -> HealthActor (ask, at exit): the run's figures over every incarnation (a RunTotals)."""


@dataclass(frozen=True, slots=True)
class HealthRequest:
    """Root -> HealthActor (ask): the health dump as a dict, without writing it (the embedding API's stats)."""


@dataclass(frozen=True, slots=True)
class MetricsRequest:
    """Root's metrics server -> HealthActor (ask, per scrape): the figures of ``/metrics`` (a
    ``l2rec.runtime.summary.MetricsSnapshot``)."""
