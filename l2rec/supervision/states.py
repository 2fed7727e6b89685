"""The supervisor's states and kinds, as string enums (after Supervisor's ``states.py``): no dependencies,
each value the exact string the health dump and the logs have always shown.

Members are ``str``: they compare equal to their strings and serialise as them (orjson, sqlite3, logs).
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    """What a process is; the ``role`` of its log records and of its entry in the health dump."""

    ROOT = "root"
    WRITER = "writer"
    SHARD = "shard"


class RestartType(StrEnum):
    """When a child that ended is started again (Erlang/OTP's restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit (a replay shard that finished stays finished)
    TEMPORARY = "temporary"  # never


class Breaker(StrEnum):
    """A child's circuit breaker. Transitions (``l2rec.supervision.policy.ChildPolicy``):

    - CLOSED -> OPEN: more than ``max_restarts`` failures within ``period_s``, or a rate limit (HTTP 429);
    - OPEN -> HALF_OPEN: the cooldown passed and the supervisor started the one trial;
    - HALF_OPEN -> CLOSED: the trial ran healthy for ``reset_after_s``;
    - HALF_OPEN -> OPEN: the trial failed; the cooldown doubles (capped) and the reopening is counted.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Action(StrEnum):
    """What the supervisor does after a child exit."""

    RESTART = "restart"  # at ``Decision.restart_at``
    NONE = "none"  # the child is finished (transient after a normal exit, temporary)
    ESCALATE = "escalate"  # stop the whole tree and exit 75: the service manager takes over


class ActorState(StrEnum):
    """An actor's ``state`` in the health dump."""

    RUNNING = "running"
    STOPPING = "stopping"  # the connection is closing its socket
    BACKPRESSURED = "backpressured"  # the book actor sheds rows: its writer link is full
    RETRYING = "retrying"  # the writer retries a batch the database refused (locked, full)
