"""Logging across processes: children send records up their uplink pipe; the root formats and writes them.

The log file gets one JSON object per line (ts, level, role, logger, event, fields); stderr gets readable
text. Hot paths never log per message: they count, and the counters go to the health dump.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from l2rec.runtime.progress import TerminalLine, set_terminal

ROLE = "root"


class JsonFormatter(logging.Formatter):
    """One JSON object per line. ``extra={"fields": {...}}`` adds structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "role": getattr(record, "role", ROLE),
            "pid": record.process,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            base += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return base


class TerminalHandler(logging.StreamHandler):  # type: ignore[type-arg]  # StreamHandler[TextIO] only in typeshed
    """stderr on a terminal: a progress line shown there (``l2rec.runtime.progress``) is erased before a
    record is written and drawn again after it, so records never land in the middle of the line."""

    def __init__(self, line: TerminalLine) -> None:
        super().__init__(line.stream)
        self.line = line

    def emit(self, record: logging.LogRecord) -> None:
        with self.line.paused():
            super().emit(record)


class _RoleFilter(logging.Filter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "role"):
            record.role = self.role
        return True


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened after logrotate moved it (SIGHUP)."""

    def reopen(self) -> None:
        self.acquire()
        try:
            if self.stream:
                self.stream.close()
            self.stream = self._open()
        finally:
            self.release()


class RootLogging:
    """The root's log sink: the one place where records from all processes are formatted and written."""

    def __init__(self, level: str, log_file: str | None) -> None:
        self.handlers: list[logging.Handler] = []
        self.terminal: TerminalLine | None = None
        err: logging.Handler
        if sys.stderr.isatty():
            # A replay's progress line lives on this terminal too (the HealthActor draws it).
            self.terminal = TerminalLine(sys.stderr)
            set_terminal(self.terminal)
            err = TerminalHandler(self.terminal)
        else:
            err = logging.StreamHandler(sys.stderr)
        err.setFormatter(TextFormatter("%(asctime)s %(levelname)s [%(role)s] %(name)s: %(message)s"))
        self.handlers.append(err)
        self.file_handler: ReopenableFileHandler | None = None
        if log_file:
            self.file_handler = ReopenableFileHandler(log_file, encoding="utf-8")
            self.file_handler.setFormatter(JsonFormatter())
            self.handlers.append(self.file_handler)
        root = logging.getLogger()
        root.handlers[:] = self.handlers
        for h in self.handlers:
            h.addFilter(_RoleFilter("root"))
        root.setLevel(getattr(logging, level))

    def handle(self, record: logging.LogRecord) -> None:
        """Write a record that came from a child (already filtered by the child's level)."""
        for h in self.handlers:
            h.handle(record)

    def reopen(self) -> None:
        if self.file_handler is not None:
            self.file_handler.reopen()

    def stop(self) -> None:
        if self.terminal is not None:
            self.terminal.clear()
            set_terminal(None)
        for h in self.handlers:
            h.flush()
        if self.file_handler is not None:
            self.file_handler.close()


class HostLogging:
    """The log sink of a root embedded in a host process (``l2rec.embed``): a child's record goes to the
    host's own logging configuration under its logger's name (``actors.*``, ``recorder.*``), as if it had
    been logged in the host; nothing of the host's configuration is replaced. ``on_record`` also sees
    every child record (the embedding API turns some into error callbacks)."""

    def __init__(self, on_record: Callable[[logging.LogRecord], None] | None = None) -> None:
        self.on_record = on_record

    def handle(self, record: logging.LogRecord) -> None:
        """Hand a child's record to the host's logger of the same name (if it is enabled for the level)."""
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
        if self.on_record is not None:
            self.on_record(record)

    def reopen(self) -> None:
        """The host owns its files: nothing to reopen."""

    def stop(self) -> None:
        """The host's handlers stay the host's."""


def child_logging(uplink: Any, level: str, role: str) -> None:
    """Route every record of this (spawned) process to the root through ``uplink``, tagged with ``role``."""
    handler = logging.handlers.QueueHandler(uplink)
    handler.addFilter(_RoleFilter(role))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level))


class RateLimited:
    """Lets a repeated warning through at most once per ``interval_s``, counting what it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def allow(self, key: str) -> tuple[bool, int]:
        """(whether to log now, how many were suppressed since the last one logged)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self.suppressed.pop(key, 0)
