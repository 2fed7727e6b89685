"""The recorder embedded in a host process (a trading bot), with the seed's ``data_ingestor`` API:
``create_data_ingestor(config_dict)``, ``DataIngestor``, ``L2Update``, ``DataIngestorConfig`` and the error
types (``l2rec.embed.errors``). README: "Embed it in a bot"."""

from l2rec.embed.config import DataIngestorConfig
from l2rec.embed.errors import (
    CallbackError,
    ChildRestarted,
    ConnectionLost,
    GapDetected,
    IngestorError,
    StartFailed,
    WriterFailed,
)
from l2rec.embed.ingestor import DataIngestor, create_data_ingestor
from l2rec.embed.updates import L2Update

__all__ = [
    "CallbackError", "ChildRestarted", "ConnectionLost", "DataIngestor", "DataIngestorConfig", "GapDetected",
    "IngestorError", "L2Update", "StartFailed", "WriterFailed", "create_data_ingestor",
]
