"""Plumbing every process shares: configuration, logs, the uplink to the root, fault injection."""
