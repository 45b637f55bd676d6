"""The end-to-end pipeline benchmark, run by bench/pipeline.py (see bench/README.md)."""
