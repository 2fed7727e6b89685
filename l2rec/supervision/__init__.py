"""Supervision: restart policy (backoff as a circuit breaker), states, and child process specs."""
