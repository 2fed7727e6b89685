"""What every child process does the same way: signals, logs up the uplink, GC tuning, the stop pipe,
the ticker, and the exit codes the root reads.

Each child gets two pipes of its own from the root: ``ctl`` (root -> child: "stop"; EOF means the root is
gone) and ``uplink`` (child -> root: log records and status reports). Children ignore SIGINT and SIGTERM:
a Ctrl-C or a service manager's SIGTERM reaches the whole process group, and the root alone decides the
order of shutdown (shards first, writer last).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import pykka

from l2rec.messages.control import Tick
from l2rec.runtime.logs import child_logging
from l2rec.runtime.uplink import Uplink

TICK_S = 0.05  # flush-by-age granularity and watchdogs; finer ticks cost live CPU for nothing
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_DB = 3
EXIT_RATE_LIMITED = 4
EXIT_ROWS_FAILED = 5  # the writer: rows the table refused (not stored)


def child_setup(uplink_conn: Connection, level: str, role: str) -> Uplink:
    """Ignore the stop signals (the root drives the stop) and SIGHUP, send logs up the uplink, tune the GC."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # SIGHUP is the root's (it reopens the log file, which only the root writes); its default action would
    # end a child that gets it too: `systemctl kill -s HUP` (every process of the unit), a closed terminal.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    install_stack_dump(role)
    uplink = Uplink(uplink_conn)
    child_logging(uplink, level, role)
    tune_gc()
    return uplink


def print_stacks(role: str) -> None:
    """Every thread's stack to stderr, under a line naming the process."""
    sys.stderr.write(f"--- stacks of {role} (pid {os.getpid()}) ---\n")
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()


def install_stack_dump(role: str) -> None:
    """SIGUSR2 prints this process's stacks (the root forwards its SIGUSR2 to every child); the process
    goes on. A Python-level handler, so the label comes first: it runs within one tick of the main thread,
    which only ever waits with a timeout."""
    def dump(_signum: int, _frame: FrameType | None) -> None:
        print_stacks(role)

    signal.signal(signal.SIGUSR2, dump)


def tune_gc() -> None:
    """The hot path makes ~15 container objects a frame (parsed JSON, levels, updates, rows) and frees
    them by reference counting; none forms a cycle. With the default threshold (700) the cyclic
    collector ran every ~50 frames and, each time its older generations came due, walked every object
    of the process. Modules and classes loaded by now are frozen (never scanned again) and collections
    are rarer; cycles, if any, are still collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def stop_requested(ctl: Connection, timeout: float) -> str | None:
    """"stop" from the root, or "root gone" when its end of the pipe closed; None otherwise."""
    try:
        if ctl.poll(timeout):
            return str(ctl.recv())
    except (EOFError, OSError):
        return "root gone"
    return None


def run_ticker(refs: list[pykka.ActorRef[Any]], stop: threading.Event) -> None:
    """Tell every actor a Tick each TICK_S until ``stop`` (pykka has no timers)."""
    while not stop.wait(TICK_S):
        tick = Tick(time.time_ns())
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(tick)
