"""The REST API and dashboard."""
