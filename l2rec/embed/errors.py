"""What the embedding API's error callback receives: one small exception hierarchy.

    IngestorError                 anything the recorder wants the host to know about
     |-- StartFailed              start() could not bring the recorder up (returns False)
     |-- ConnectionLost           a websocket session ended, or a connect attempt failed
     |-- GapDetected              a topic lost sync (``topic``, ``reason``: the l2_gaps reason)
     |-- WriterFailed             the writer could not commit (lock, full disk, refused rows, open failed)
     |-- ChildRestarted           a writer or shard process ended and the supervisor restarts it
     '-- CallbackError            the update callback raised (the exception is ``__cause__``)

The recorder goes on after each of them (recording never waits for the host); only StartFailed means it is
not running. Which log records become which error is decided here, from the records every child process
already sends up to the root (they are rate-limited where they repeat).
"""

from __future__ import annotations

import logging


class IngestorError(Exception):
    """Base of every error the ingestor reports; ``fields`` holds the structured details of its log line."""

    def __init__(self, message: str, fields: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.fields: dict[str, object] = dict(fields or {})


class StartFailed(IngestorError):
    """start() returned False: the database could not be used, the endpoint refused or could not be
    reached, or the tree stopped before it was up."""


class ConnectionLost(IngestorError):
    """A websocket session ended (the connection reconnects by itself) or a connect attempt failed."""


class GapDetected(IngestorError):
    """A topic lost sync; no rows for it until its next snapshot (a row in ``l2_gaps``)."""

    @property
    def topic(self) -> str:
        return str(self.fields.get("topic", ""))

    @property
    def reason(self) -> str:
        return str(self.fields.get("reason", ""))


class WriterFailed(IngestorError):
    """The writer could not commit or open the database (it retries transient errors by itself)."""


class ChildRestarted(IngestorError):
    """A child process (``fields['child']``: writer, shard-N) ended and is restarted under its policy."""


class CallbackError(IngestorError):
    """The update callback raised; delivery goes on with the next update."""


def error_from_record(record: logging.LogRecord) -> IngestorError | None:
    """The error a child process's log record stands for, or None for records the host need not hear of."""
    raw = getattr(record, "fields", None)
    fields: dict[str, object] = dict(raw) if isinstance(raw, dict) else {}
    event = record.getMessage()
    role = str(getattr(record, "role", ""))
    detail = ", ".join(f"{k}={v}" for k, v in fields.items())
    text = f"{role}: {event}" + (f" ({detail})" if detail else "")
    if record.name == "actors.connection":
        if event == "disconnected" or event.startswith("cannot reach"):
            return ConnectionLost(text, fields)
        if event == "reconnect scheduled" and str(fields.get("reason", "")).startswith("connect "):
            return ConnectionLost(text, fields)  # a connect attempt failed (a disconnect said so already)
    if record.name == "actors.features" and event.startswith("gap:"):
        return GapDetected(text, fields)
    if record.levelno >= logging.WARNING and (record.name == "actors.writer" or role == "writer"):
        return WriterFailed(text, fields)
    if record.levelno >= logging.ERROR:
        return IngestorError(text, fields)
    return None
