"""A throwaway PostgreSQL server for the tests and the benchmark: initdb in a temporary directory, started
on a free port of 127.0.0.1, stopped (and the directory removed) at the end. No pytest here: bench/ uses it.

Debian's server package puts its binaries outside PATH (``pg_config --bindir``). ``initdb`` refuses to run
as root, so as root every server command runs as the ``postgres`` user (``runuser``) in a directory it owns.
Connections over TCP need a password (scram-sha-256), so that authentication failures can be tested.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

SUPERUSER = "postgres"
PASSWORD = "s3cret-Pw.42"  # tests check that it never appears in what the recorder prints or writes


def find_bindir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres (``pg_config --bindir``, else Debian's layout)."""
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10)
            candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and all((Path(c) / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(c)
    return None


def unavailable_reason() -> str | None:
    """Why no throwaway server can be started here (None: it can)."""
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found: install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SUPERUSER)
        except KeyError:
            return "running as root and there is no 'postgres' user to run initdb as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to run initdb as 'postgres'"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed: pip install -e '.[postgres]'"
    return None


def server_cpu_s(data_dir: Path | None) -> float:
    """CPU seconds of the server running from ``data_dir``: the postmaster, its reaped children (finished
    backends) and the live ones. 0 when unknown (no data directory: a server that is not ours)."""
    import psutil

    if data_dir is None:
        return 0.0
    try:
        p = psutil.Process(int((data_dir / "postmaster.pid").read_text().split()[0]))
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in p.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                ct = c.cpu_times()
                total += ct.user + ct.system
        return float(total)
    except (OSError, ValueError, psutil.Error):
        return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory. ``url()`` gives a libpq URL for a database of it."""

    def __init__(self, *, fsync: bool = True, settings: dict[str, str] | None = None) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(unavailable_reason() or "no PostgreSQL binaries")
        self.bindir = bindir
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        self.dir = Path(tempfile.mkdtemp(prefix="l2rec-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self.settings = {"listen_addresses": "127.0.0.1", "port": str(self.port),
                         "unix_socket_directories": str(self.dir), "fsync": "on" if fsync else "off",
                         "max_connections": "50", **(settings or {})}
        if self.as_root:
            user = pwd.getpwnam(SUPERUSER)
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            os.chown(pwfile, pwd.getpwnam(SUPERUSER).pw_uid, -1)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--pwfile", str(pwfile), "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync")
        pwfile.unlink()
        with (self.data / "postgresql.conf").open("a") as fh:
            for k, v in self.settings.items():
                fh.write(f"{k} = '{v}'\n")
        self.running = False

    def _cmd(self, exe: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / exe), *args]
        return ["runuser", "-u", SUPERUSER, "--", *cmd] if self.as_root else cmd

    def _run(self, exe: str, *args: str, timeout: float = 120) -> None:
        res = subprocess.run(self._cmd(exe, *args), capture_output=True, text=True, timeout=timeout,
                             cwd=self.dir)
        if res.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{exe} {' '.join(args)} failed ({res.returncode}): {res.stderr}{res.stdout}\n{log}")

    def start(self) -> PgServer:
        """Start the server and wait until it accepts connections (pg_ctl -w)."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: disconnect every client and shut down cleanly; ``immediate``: as a crash would."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self.running = False

    def url(self, dbname: str = "postgres", *, password: str | None = PASSWORD, user: str = SUPERUSER) -> str:
        auth = user if password is None else f"{user}:{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A fresh database; returns its URL (with the password)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def running_server(**kwargs: object) -> Iterator[PgServer]:
    """``with running_server() as pg:`` a started server, removed at the end."""
    srv = PgServer(**kwargs)  # type: ignore[arg-type]
    try:
        yield srv.start()
    finally:
        srv.close()
