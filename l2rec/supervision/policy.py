"""Restart policy per supervised child: exponential backoff as a circuit breaker.

Drawn from Erlang/OTP supervisors (restart types, intensity/period), Akka's BackoffSupervisor and
CircuitBreaker:

1. restart type: permanent (always restart), transient (only after an abnormal exit), temporary (never);
2. backoff: min * factor**(attempt-1), capped, with jitter; the attempt count resets only after the child
   ran *healthy* (alive, heartbeating, books in sync) for ``reset_after_s``, not when it merely started;
3. intensity: more than ``max_restarts`` failures within ``period_s`` opens the breaker: no restart for a
   cooldown that doubles each time it reopens (capped);
4. half-open: after the cooldown exactly one trial start; healthy for ``reset_after_s`` closes the
   breaker, a failure reopens it;
5. escalation: a critical child's breaker opening, or any breaker reopening ``escalate_after_reopens``
   times in a row, means the whole tree stops (the service manager takes over);
6. a rate limit (HTTP 429 on the handshake) opens the breaker at once, for at least Retry-After.

Plain and deterministic: time comes from the caller, randomness from an injected ``random.Random``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from l2rec.supervision.backoff import Backoff
from l2rec.supervision.states import Action, Breaker, RestartType

RESTART_TYPES = tuple(RestartType)


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    restart: RestartType = RestartType.PERMANENT
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 0.2
    reset_after_s: float = 30.0
    max_restarts: int = 5
    period_s: float = 60.0
    cooldown_s: float = 30.0
    cooldown_max_s: float = 900.0
    escalate_after_reopens: int = 3
    critical: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    """What the supervisor must do after a child exit."""

    action: Action
    restart_at: float | None
    delay_s: float
    breaker: Breaker
    attempt: int
    reason: str


@dataclass(slots=True)
class ChildPolicy:
    """The restart state of one child."""

    name: str
    cfg: PolicyConfig
    rng: random.Random = field(default_factory=random.Random)
    breaker: Breaker = Breaker.CLOSED
    attempt: int = 0
    restarts: int = 0
    reopens: int = 0
    cooldown_s: float = 0.0
    restart_at: float | None = None
    healthy_since: float | None = None
    last_error: str | None = None
    failures: deque[float] = field(default_factory=deque)
    backoff: Backoff = field(init=False)

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.cfg.backoff_min_s, self.cfg.backoff_max_s, self.cfg.backoff_factor,
                               self.cfg.backoff_jitter)

    def on_exit(self, now: float, *, abnormal: bool, error: str | None = None,
                retry_after_s: float | None = None) -> Decision:
        """The child ended. ``retry_after_s`` set means the exchange rate-limited us (HTTP 429)."""
        self.healthy_since = None
        self.restart_at = None
        if error:
            self.last_error = error
        kind = self.cfg.restart
        if kind == RestartType.TEMPORARY or (kind == RestartType.TRANSIENT and not abnormal):
            return Decision(Action.NONE, None, 0.0, self.breaker, self.attempt, f"{kind} child exited")
        self.failures.append(now)
        while self.failures and now - self.failures[0] > self.cfg.period_s:
            self.failures.popleft()

        if retry_after_s is not None:
            return self._open(now, f"rate limited, Retry-After {retry_after_s:g}s", floor_s=retry_after_s)
        if self.breaker == Breaker.HALF_OPEN:
            return self._open(now, "half-open trial failed")
        if len(self.failures) > self.cfg.max_restarts:
            return self._open(now, f"{len(self.failures)} failures within {self.cfg.period_s:g}s")
        self.attempt += 1
        delay = self.backoff.delay(self.attempt, self.rng)
        self.restart_at = now + delay
        return Decision(Action.RESTART, self.restart_at, delay, self.breaker, self.attempt, "backoff")

    def _open(self, now: float, reason: str, floor_s: float = 0.0) -> Decision:
        if self.breaker == Breaker.HALF_OPEN:
            # The trial failed: reopen for twice as long, and count reopenings since the last close.
            self.reopens += 1
            self.cooldown_s = min(self.cfg.cooldown_max_s, max(self.cooldown_s, self.cfg.cooldown_s) * 2)
        else:
            self.cooldown_s = self.cfg.cooldown_s
        self.cooldown_s = max(self.cooldown_s, floor_s)
        self.breaker = Breaker.OPEN
        self.attempt += 1
        if self.cfg.critical:
            return Decision(Action.ESCALATE, None, 0.0, Breaker.OPEN, self.attempt,
                            f"critical child's breaker opened: {reason}")
        if self.reopens >= self.cfg.escalate_after_reopens:
            return Decision(Action.ESCALATE, None, 0.0, Breaker.OPEN, self.attempt,
                            f"breaker reopened {self.reopens} times in a row: {reason}")
        self.restart_at = now + self.cooldown_s
        return Decision(Action.RESTART, self.restart_at, self.cooldown_s, Breaker.OPEN, self.attempt,
                        f"breaker open: {reason}")

    def due(self, now: float) -> bool:
        return self.restart_at is not None and now >= self.restart_at

    def on_restart(self, now: float) -> None:
        """The supervisor started the child again (an open breaker lets exactly one trial through)."""
        self.restart_at = None
        self.restarts += 1
        self.healthy_since = None
        if self.breaker == Breaker.OPEN:
            self.breaker = Breaker.HALF_OPEN

    def on_health(self, now: float, healthy: bool) -> None:
        """Called periodically; after ``reset_after_s`` of continuous health the child is trusted again."""
        if not healthy:
            self.healthy_since = None
            return
        if self.healthy_since is None:
            self.healthy_since = now
            return
        if now - self.healthy_since >= self.cfg.reset_after_s and (self.attempt or self.breaker != Breaker.CLOSED):
            self.attempt = 0
            self.reopens = 0
            self.cooldown_s = 0.0
            self.breaker = Breaker.CLOSED

    def snapshot(self, now: float) -> dict[str, object]:
        return {
            "breaker": self.breaker, "attempt": self.attempt, "restarts": self.restarts,
            "reopens": self.reopens, "recent_failures": len(self.failures),
            "next_restart_in_s": None if self.restart_at is None else round(max(0.0, self.restart_at - now), 3),
            "healthy_for_s": None if self.healthy_since is None else round(now - self.healthy_since, 3),
            "last_error": self.last_error, "restart_type": self.cfg.restart, "critical": self.cfg.critical,
        }
