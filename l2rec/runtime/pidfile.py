"""The root's pid file (``--pid-file``): how scripts and the README find *this* recorder's process, where
``pgrep -f 'python supervisor.py'`` picks any user's."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from l2rec.runtime.config import ConfigError


def running_pid(path: Path) -> int | None:
    """The pid a pid file names, if that process is alive (and is not us)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


class PidFile:
    """Written (atomically) when entered, removed on exit if it still names this process. A file naming
    another live process is refused: two recorders would both believe they own it."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None

    def __enter__(self) -> PidFile:
        if self.path is None:
            return self
        other = running_pid(self.path)
        if other is not None:
            raise ConfigError("pid_file", str(self.path), f"process {other} named in it is still running; "
                              "stop it first, or give another --pid-file")
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(f"{os.getpid()}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            raise ConfigError("pid_file", str(self.path), f"cannot be written: {exc.strerror or exc}") from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.path is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if int(self.path.read_text().strip()) == os.getpid():
                self.path.unlink()
