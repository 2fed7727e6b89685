"""Which of a connection's topics Bybit refused, and when every one of them was.

A refusal names one topic at most (``Invalid symbol :[orderbook.50.NOPE]``, ``error:handler not
found,topic:...``) and often carries no ``req_id``, and Bybit answers a request of several topics with
one reply: so a request of two unknown symbols names only one. After the first refusal of a session the
connection therefore *probes*: it subscribes each topic not yet known good or bad on its own, and every
probe's answer settles that topic (an ack or ``already subscribed``: good; a refusal: bad); a probe also
subscribes a good topic that a refused request had left out. When every topic is refused the run cannot
record anything: exit 78.

Plain and deterministic: no clock, no I/O; the connection actor sends what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALREADY_SUBSCRIBED = "already subscribed"
PROBE_PREFIX = "q"  # req_ids of probes start with it: their expected "already subscribed" is no error


@dataclass(slots=True)
class RefusalTracker:
    """Per connection (across its sessions: a refused symbol stays refused)."""

    topics: tuple[str, ...]
    refused: dict[str, str] = field(default_factory=dict)  # topic -> Bybit's message
    good: set[str] = field(default_factory=set)
    probes: dict[str, str] = field(default_factory=dict)  # req_id -> topic
    probed_session: int = -1

    def on_reply(self, session_id: int, ok: bool, req_id: str | None, topic: str | None,
                 message: str) -> list[str]:
        """A reply arrived; returns the topics to probe now (each in a request of its own)."""
        probed = self.probes.pop(req_id, None) if req_id is not None else None
        named = topic if topic in self.topics else probed
        if named is None:
            return []
        if ok or ALREADY_SUBSCRIBED in message:
            self.good.add(named)
            self.refused.pop(named, None)
            return []
        self.refused[named] = message
        if self.probed_session == session_id:
            return []
        self.probed_session = session_id
        return [t for t in self.topics if t not in self.refused and t not in self.good]

    def probe_sent(self, req_id: str, topic: str) -> None:
        self.probes[req_id] = topic

    @property
    def all_refused(self) -> bool:
        return bool(self.topics) and all(t in self.refused for t in self.topics)

    def is_probe(self, req_id: str | None) -> bool:
        return req_id is not None and req_id in self.probes
