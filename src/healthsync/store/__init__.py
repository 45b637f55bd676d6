"""Where processed data lives: the Redis live cache (and, later, the archive)."""
