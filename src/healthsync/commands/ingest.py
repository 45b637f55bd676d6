"""`healthsync ingest`: the TCP/TLS server that takes device lines to Kafka."""

from __future__ import annotations

import argparse
import asyncio

from healthsync.commands.base import Subparsers, settings_from


def cmd_ingest(args: argparse.Namespace) -> int:
    from healthsync.collector import collect_less
    from healthsync.ingest.service import serve
    from healthsync.kafka import ensure_topics
    from healthsync.logs import setup_logging
    from healthsync.priority import give_way

    settings = settings_from(args)
    if args.host:
        settings.ingest.host = args.host
    if args.port is not None:
        settings.ingest.port = args.port
    setup_logging("ingest", settings.log_level)
    give_way(settings.ingest.nice)
    ensure_topics(settings.kafka)
    collect_less()
    asyncio.run(serve(settings))
    return 0


def register(sub: Subparsers) -> None:
    ingest = sub.add_parser(
        "ingest",
        help="run the TCP ingest server (devices -> Kafka)",
        description="Listen for devices on the TLS port (mutual TLS with the certificates "
        "in tls.dir; see `healthsync certs`) and, only when HEALTHSYNC_INGEST_PLAIN_ENABLED="
        "true, on the plaintext port (loopback only unless "
        "HEALTHSYNC_INGEST_PLAIN_ALLOW_REMOTE). `healthsync up` opens the plaintext port "
        "unless it is set to false.",
    )
    ingest.add_argument("--host", help="plaintext listen address (default 127.0.0.1)")
    ingest.add_argument("--port", type=int, help="plaintext listen port (default 7000)")
    ingest.set_defaults(func=cmd_ingest)
