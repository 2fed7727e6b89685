"""What each OS process runs: the root supervisor, the writer, a shard."""
