"""pykka has no timers: a daemon ``threading.Timer`` tells the actor later, quietly if it is gone."""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import pykka


def tell_quietly(ref: pykka.ActorRef[Any], msg: object) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(msg)


def tell_later(ref: pykka.ActorRef[Any], delay_s: float, msg: object) -> threading.Timer:
    timer = threading.Timer(delay_s, tell_quietly, args=(ref, msg))
    timer.daemon = True
    timer.start()
    return timer
