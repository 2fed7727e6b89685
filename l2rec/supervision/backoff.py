"""Capped exponential backoff with jitter, shared by reconnects and (later) supervisor restarts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """``delay(n)`` for the n-th consecutive failure (1-based): min * factor**(n-1), spread by +-jitter so
    that many clients do not retry in lockstep, and never above ``max_s`` (the documented cap holds)."""

    min_s: float = 0.5
    max_s: float = 60.0
    factor: float = 2.0
    jitter: float = 0.2

    def base(self, attempt: int) -> float:
        exp = min(max(attempt, 1) - 1, 64)  # bounded: factor**exp must not overflow
        return min(self.max_s, self.min_s * self.factor**exp)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        r = (rng or random).uniform(-self.jitter, self.jitter)
        return min(self.max_s, max(0.0, self.base(attempt) * (1.0 + r)))
