"""Bybit v5 public websocket endpoints.

Demo trading has no public stream of its own: Bybit's docs say its public data is mainnet's, and
``stream-demo`` serves private topics only. The seed routed ``sandbox``/demo to the wrong hosts; this
table is the single place that decides.
"""

from __future__ import annotations

CATEGORIES: tuple[str, ...] = ("linear", "spot", "inverse")
NETWORKS: tuple[str, ...] = ("mainnet", "testnet", "demo")

_HOSTS = {
    "mainnet": "stream.bybit.com",
    "testnet": "stream-testnet.bybit.com",
    # Public market data for demo accounts comes from mainnet (docs/v5/demo).
    "demo": "stream.bybit.com",
}

# Depths Bybit serves on live public streams today. 500 was removed in 2025 ("handler not found").
LIVE_DEPTHS: dict[str, tuple[int, ...]] = {
    "linear": (1, 50, 200, 1000),
    "inverse": (1, 50, 200, 1000),
    "spot": (1, 50, 200, 1000),
    "option": (25, 100),
}


def public_ws_url(network: str, category: str) -> str:
    """The public websocket URL for a network and category."""
    if network not in _HOSTS:
        raise ValueError(f"unknown network {network!r}; allowed: {', '.join(NETWORKS)}")
    if category not in LIVE_DEPTHS:
        raise ValueError(f"unknown category {category!r}")
    return f"wss://{_HOSTS[network]}/v5/public/{category}"
