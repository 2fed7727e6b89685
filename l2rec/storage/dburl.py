"""What ``db_path`` names: an SQLite file, or a PostgreSQL server by a libpq URL; and how to show it.

A URL may hold a password (``postgresql://user:secret@host/db``, or ``?password=secret``). It must never
reach a log line, the health dump or an error message, so every place that shows where the rows go shows
``redact_url(db_path)``, and text that came back from the server or the driver passes through
``scrub`` first. No imports beyond the standard library: the configuration checks use it too.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import unquote

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
HIDDEN = "***"
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)([^&#]*)")


def is_postgres_url(db_path: str) -> bool:
    """Whether ``db_path`` is a PostgreSQL URL (``postgresql://`` or ``postgres://``, libpq's schemes)."""
    return db_path.strip().lower().startswith(POSTGRES_SCHEMES)


def _split_userinfo(url: str) -> tuple[str, str, str] | None:
    """(scheme + ``//``, userinfo, rest from the host on) of a URL with a userinfo part, else None."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return None
    authority_end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority = rest[:authority_end]
    userinfo, at, _hosts = authority.rpartition("@")
    if not at:
        return None
    return scheme + sep, userinfo, rest[len(userinfo):]


def passwords_in(url: str) -> list[str]:
    """Every password the URL holds, as written and percent-decoded (what ``scrub`` removes)."""
    found: list[str] = []
    parts = _split_userinfo(url)
    if parts is not None and ":" in parts[1]:
        found.append(parts[1].split(":", 1)[1])
    found += [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    out: list[str] = []
    for pw in found:
        for form in (pw, unquote(pw)):
            if form and form not in out:
                out.append(form)
    return out


def redact_url(db_path: str) -> str:
    """``db_path`` safe to show: a URL's password (in the userinfo or the query) replaced by ``***``; an
    SQLite path as it is."""
    if not is_postgres_url(db_path):
        return db_path
    url = db_path
    parts = _split_userinfo(url)
    if parts is not None and ":" in parts[1]:
        scheme, userinfo, rest = parts
        url = f"{scheme}{userinfo.split(':', 1)[0]}:{HIDDEN}{rest}"
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + HIDDEN, url)


def scrub(text: str, db_path: str) -> str:
    """``text`` (an error message, a traceback) with the URL shown redacted and any password of
    ``db_path`` replaced, wherever it appears."""
    if not is_postgres_url(db_path):
        return text
    text = text.replace(db_path, redact_url(db_path))
    for pw in passwords_in(db_path):
        text = text.replace(pw, HIDDEN)
    return text


def local_base(db_path: str) -> Path:
    """A local file prefix for what belongs beside the database (sidecars, an embedded health file): the
    SQLite file's path, or for a server a name in the working directory made of a digest of the URL without
    its password (never the URL itself: it may hold a password, and it is no path)."""
    if is_postgres_url(db_path):
        return Path(f"l2rec-pg-{hashlib.sha256(redact_url(db_path).encode()).hexdigest()[:16]}").absolute()
    return Path(db_path)
