"""`healthsync archive`: run the archiver stage (see :mod:`healthsync.stream.archiver`)."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Consume the vitals topic in its own consumer group (archive.group_id) and write every "
    "reading to the archive at HEALTHSYNC_ARCHIVE_URL: file://<dir> (default file://run/archive) "
    "or s3://bucket/prefix (endpoint from HEALTHSYNC_ARCHIVE_S3_ENDPOINT or AWS_ENDPOINT_URL, "
    "server-side encryption HEALTHSYNC_ARCHIVE_SSE). Identified Parquet is encrypted with the "
    "keyring (or KMS); a de-identified research set is written beside it. A partition's "
    "readings are written every HEALTHSYNC_ARCHIVE_ROLL_S seconds (default 60) or at "
    "HEALTHSYNC_ARCHIVE_ROLL_BYTES, and its offsets committed only after that. SIGTERM writes "
    "what is buffered and stops."
)


def register(subparsers: Any) -> None:
    """Add the `archive` command to the `healthsync` parser."""
    parser = subparsers.add_parser(
        "archive", help="run the archiver (Kafka -> encrypted Parquet)", description=DESCRIPTION
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from healthsync.config import Settings
    from healthsync.kafka import ensure_topics
    from healthsync.logs import setup_logging
    from healthsync.priority import give_way
    from healthsync.wiring import build_archiver

    config: Path | None = getattr(args, "config", None)
    settings = Settings.load(config)
    if getattr(args, "log_level", None):
        settings.log_level = args.log_level
    setup_logging("archiver", settings.log_level)
    give_way(settings.archive.nice)
    ensure_topics(settings.kafka)
    archiver = build_archiver(settings)
    signal.signal(signal.SIGTERM, lambda *_: archiver.stop())
    signal.signal(signal.SIGINT, lambda *_: archiver.stop())
    signal.signal(signal.SIGUSR1, lambda *_: archiver.write_now())
    archiver.run()
    return 0
