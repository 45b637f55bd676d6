"""Compute jobs over the archive: definitions, the scheduler and the runners (local, AWS)."""
