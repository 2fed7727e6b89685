"""Bybit v5: the public websocket protocol, endpoints, frame reading and the dump formats."""
