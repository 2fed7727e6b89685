"""The order book, the per-topic sequence keeper (gaps, resyncs) and the training row it makes."""
