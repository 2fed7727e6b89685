"""What every actor of the recorder shares: a message-type -> handler table, the messages-in counter,
the fault-injection hooks of the tests, and the status report to the root.

An actor declares its handlers with :func:`handles`; ``on_receive`` is one dict lookup, not an
``isinstance`` ladder. A message no handler takes is ignored (pykka's own control messages never reach
``on_receive``).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pykka

from l2rec.messages.health import Status
from l2rec.runtime.faults import ActorFault, Faults
from l2rec.runtime.uplink import Uplink
from l2rec.supervision.states import ActorState, Role

REPORT_INTERVAL_NS = 1_000_000_000

F = TypeVar("F", bound=Callable[..., Any])
Handler = Callable[[Any, Any], Any]


def handles(*message_types: type, fault_point: bool = False) -> Callable[[F], F]:
    """Marks a method as the handler of ``message_types``. ``fault_point``: the tests' injected faults
    (``crash_after=N``, ``hang_after=N``) count the messages of these types."""
    def mark(fn: F) -> F:
        fn.__l2rec_handles__ = (message_types, fault_point)  # type: ignore[attr-defined]  # a marker read by __init_subclass__
        return fn
    return mark


class Reporter:
    """Sends an actor's status up its process's uplink at most once per interval (dropped if the root is
    gone)."""

    def __init__(self, uplink: Uplink | None, role: Role, actor: str, shard_id: int | None) -> None:
        self.uplink = uplink
        self.role = role
        self.actor = actor
        self.shard_id = shard_id
        self.pid = os.getpid()
        self.next_ns = 0

    def due(self, now_ns: int) -> bool:
        """Whether a report would go now (lets a caller skip gathering the figures)."""
        return self.uplink is not None and now_ns >= self.next_ns

    def maybe(self, now_ns: int, stats: dict[str, object], force: bool = False) -> None:
        """Report ``stats`` if the interval passed (or ``force``)."""
        if self.uplink is None or (not force and now_ns < self.next_ns):
            return
        self.next_ns = now_ns + REPORT_INTERVAL_NS
        # The process's peak RSS rides along: the final dump still shows it after the process exited.
        stats["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.uplink.put_nowait(Status(self.role, self.actor, self.shard_id, self.pid, time.time_ns(), stats))


class RecorderActor(pykka.ThreadingActor):
    """Base of the recorder's actors: dispatch by message type, counters, fault hooks, status reports.

    Subclasses set ``name`` (the actor's name in the health dump and in ``L2REC_FAULTS``) and implement
    ``status()``; the handler table is built once per class from the methods marked with :func:`handles`.
    """

    name: ClassVar[str] = "actor"
    _handlers: ClassVar[dict[type, tuple[Handler, bool]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[type, tuple[Handler, bool]] = {}
        for klass in reversed(cls.__mro__):
            for attr in vars(klass).values():
                mark = getattr(attr, "__l2rec_handles__", None)
                if mark is not None:
                    for message_type in mark[0]:
                        table[message_type] = (attr, mark[1])
        cls._handlers = table

    def __init__(self, reporter: Reporter | None = None, faults: Faults | None = None) -> None:
        super().__init__()
        self.reporter = reporter
        self.fault: ActorFault | None = faults.for_actor(self.name) if faults is not None else None
        self.msgs_in = 0

    def on_start(self) -> None:
        if self.fault is not None:
            self.fault.on_start()

    def on_receive(self, message: Any) -> Any:
        self.msgs_in += 1
        entry = self._handlers.get(message.__class__)
        if entry is None:
            return None
        handler, fault_point = entry
        if fault_point and self.fault is not None:
            self.fault.on_message()
        return handler(self, message)

    def status(self) -> dict[str, object]:
        """This actor's counters for the health dump."""
        return {}

    def base_status(self, state: ActorState) -> dict[str, object]:
        """The fields every actor reports: state, messages in, mailbox depth."""
        mailbox = self.actor_inbox.qsize()  # type: ignore[attr-defined]  # a ThreadingActor's inbox is a queue.Queue
        return {"state": state, "messages_in": self.msgs_in, "mailbox": mailbox}

    def report(self, now_ns: int, force: bool = False) -> None:
        """Send ``status()`` to the root at most once a second (or now, with ``force``)."""
        if self.reporter is not None:
            self.reporter.maybe(now_ns, self.status(), force=force)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # pykka calls this instead of on_stop when a message raised: the last counters still go up, or
        # the run's summary would miss up to a second of a crashed incarnation's work (a parser that
        # died telling a dead book actor had counted every frame of its part by then).
        self.report(time.time_ns(), force=True)


def tell_quietly(ref: pykka.ActorRef[Any], msg: object) -> None:
    """Tell, ignoring an actor that is already gone (late timers, readers outliving their actor)."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(msg)


def tell_later(ref: pykka.ActorRef[Any], delay_s: float, msg: object) -> threading.Timer:
    """pykka has no timers: a daemon ``threading.Timer`` tells the actor later, quietly if it is gone."""
    timer = threading.Timer(delay_s, tell_quietly, args=(ref, msg))
    timer.daemon = True
    timer.start()
    return timer
