"""What a child process is started with: frozen, picklable specs (they cross to spawned processes).

The root builds one per incarnation; the child's entry point (``l2rec.processes.writer.run_writer``,
``l2rec.processes.shard.run_shard``) takes it with the child's two pipes.
"""

from __future__ import annotations

from dataclasses import dataclass

from l2rec.messages.writer import SessionRecord
from l2rec.runtime.config import RecorderConfig
from l2rec.storage.sink import LastRow


@dataclass(frozen=True, slots=True)
class WriterSpec:
    """The writer: the configuration and where its link server listens."""

    cfg: RecorderConfig
    address: str  # the Unix socket of the shard -> writer links


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """A shard: its topics (live) or its part of the file (replay), and where the writer listens."""

    cfg: RecorderConfig
    shard_id: int
    topics: tuple[str, ...]  # live: the topics of this shard's connection; replay: empty (from the file)
    writer_address: str
    incarnation: int  # 0 for the first start; > 0 after a restart (its books were lost: a gap)
    partition: tuple[int, int]  # replay: (this shard's index, number of shards) of the file's topics
    # live: where each topic's recorded data stopped, so that the gap for the time this shard (or the whole
    # recorder) was down spans the hole, from the last row to the first row after
    resume: tuple[LastRow, ...] = ()
    # the session the previous incarnation left open, now closed (ended_ns, reason: killed, hung, ...)
    close_session: SessionRecord | None = None

    @property
    def replay(self) -> bool:
        return self.cfg.replay is not None
