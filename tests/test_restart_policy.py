"""Restart policy as a circuit breaker, with an injected clock and random source: fast and exact."""

from __future__ import annotations

import random

import pytest

from l2rec.supervision.policy import ChildPolicy, PolicyConfig
from l2rec.supervision.states import Action, Breaker, RestartType

CLOSED, OPEN, HALF_OPEN = Breaker.CLOSED, Breaker.OPEN, Breaker.HALF_OPEN
RESTART, NONE, ESCALATE = Action.RESTART, Action.NONE, Action.ESCALATE
TRANSIENT, TEMPORARY = RestartType.TRANSIENT, RestartType.TEMPORARY

CFG = PolicyConfig(backoff_min_s=0.5, backoff_max_s=60, backoff_factor=2, backoff_jitter=0.2, reset_after_s=30,
                   max_restarts=5, period_s=60, cooldown_s=30, cooldown_max_s=900, escalate_after_reopens=3)


def policy(**kw) -> ChildPolicy:
    cfg = PolicyConfig(**{**{f: getattr(CFG, f) for f in CFG.__slots__}, **kw})
    return ChildPolicy("shard-0", cfg, random.Random(7))


def test_delays_grow_exponentially_within_the_jitter_bounds_and_cap():
    p = policy(max_restarts=100)
    now = 0.0
    for attempt in range(1, 12):
        d = p.on_exit(now, abnormal=True)
        assert d.action == RESTART and d.attempt == attempt and d.breaker == CLOSED
        base = min(60.0, 0.5 * 2 ** (attempt - 1))
        assert base * 0.8 <= d.delay_s <= base * 1.2
        assert d.restart_at == pytest.approx(now + d.delay_s)
        now = d.restart_at + 100  # outside the intensity window: only backoff applies
        p.on_restart(now)


def test_backoff_resets_only_after_a_healthy_period():
    p = policy()
    p.on_exit(0, abnormal=True)
    p.on_restart(1)
    p.on_health(2, True)
    p.on_health(20, True)  # healthy for 18 s: not yet trusted
    assert p.on_exit(21, abnormal=True).attempt == 2
    p.on_restart(23)
    p.on_health(24, True)
    p.on_health(40, False)  # a blip restarts the healthy clock
    p.on_health(41, True)
    p.on_health(70, True)
    assert p.attempt == 2
    p.on_health(71.5, True)
    assert p.attempt == 0
    assert p.on_exit(72, abnormal=True).attempt == 1


def test_breaker_opens_after_n_failures_in_t_then_half_open_trial_closes_it():
    p = policy()
    now = 0.0
    for _ in range(5):
        d = p.on_exit(now, abnormal=True)
        assert d.action == RESTART and d.breaker == CLOSED
        now += 1
        p.on_restart(now)
    d = p.on_exit(now, abnormal=True)  # the 6th failure within 60 s
    assert (d.action, d.breaker, d.delay_s) == (RESTART, OPEN, 30)
    assert not p.due(now + 29.9) and p.due(now + 30)
    p.on_restart(now + 30)
    assert p.breaker == HALF_OPEN
    p.on_health(now + 31, True)
    p.on_health(now + 61, True)
    assert p.breaker == CLOSED and p.attempt == 0


def test_failed_trials_reopen_with_doubling_cooldown_then_escalate():
    p = policy(max_restarts=0)
    d = p.on_exit(0, abnormal=True)
    assert (d.breaker, d.delay_s) == (OPEN, 30)
    cooldowns = []
    now = 30.0
    for _ in range(2):
        p.on_restart(now)
        d = p.on_exit(now + 1, abnormal=True)
        assert d.action == RESTART and d.breaker == OPEN
        cooldowns.append(d.delay_s)
        now = d.restart_at
    assert cooldowns == [60, 120]
    p.on_restart(now)
    d = p.on_exit(now + 1, abnormal=True)
    assert d.action == ESCALATE and "reopened 3 times" in d.reason


def test_cooldown_is_capped():
    p = policy(max_restarts=0, escalate_after_reopens=100, cooldown_max_s=100)
    p.on_exit(0, abnormal=True)
    now = 0.0
    for _ in range(6):
        p.on_restart(now)
        d = p.on_exit(now, abnormal=True)
        now = d.restart_at
    assert d.delay_s == 100


def test_critical_child_escalates_when_its_breaker_opens():
    p = policy(critical=True, max_restarts=2)
    assert p.on_exit(0, abnormal=True).action == RESTART
    assert p.on_exit(1, abnormal=True).action == RESTART
    d = p.on_exit(2, abnormal=True)
    assert d.action == ESCALATE and "critical" in d.reason


def test_rate_limit_opens_at_once_and_honours_retry_after():
    p = policy()
    d = p.on_exit(0, abnormal=True, retry_after_s=120)
    assert (d.action, d.breaker, d.delay_s) == (RESTART, OPEN, 120)
    p2 = policy()
    assert p2.on_exit(0, abnormal=True, retry_after_s=5).delay_s == 30  # never shorter than the cooldown


def test_restart_types():
    assert policy(restart=TEMPORARY).on_exit(0, abnormal=True).action == NONE
    assert policy(restart=TRANSIENT).on_exit(0, abnormal=False).action == NONE
    assert policy(restart=TRANSIENT).on_exit(0, abnormal=True).action == RESTART
    assert policy().on_exit(0, abnormal=False).action == RESTART


def test_failures_outside_the_period_do_not_count():
    p = policy()
    for i in range(20):
        d = p.on_exit(i * 61.0, abnormal=True)
        assert d.breaker == CLOSED
        p.on_restart(i * 61.0 + 1)
