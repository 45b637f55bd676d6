"""`healthsync up`: the whole pipeline on this machine, supervised."""

from __future__ import annotations

import argparse
from pathlib import Path

from healthsync.commands.base import Subparsers, settings_from


def cmd_up(args: argparse.Namespace) -> int:
    from healthsync.foreground import Supervisor
    from healthsync.logs import setup_logging
    from healthsync.supervisor import Pipeline

    settings = settings_from(args)
    setup_logging("up", "WARNING")
    pipeline = Pipeline(settings, Path(args.run_dir))
    supervisor = Supervisor(pipeline, simulate_devices=args.simulate, simulate_rate=args.rate)
    return supervisor.run()


def register(sub: Subparsers) -> None:
    up = sub.add_parser(
        "up",
        help="run the whole pipeline on this machine",
        description="Start the embedded Kafka broker and Redis (unless "
        "HEALTHSYNC_KAFKA_BOOTSTRAP / HEALTHSYNC_REDIS_URL name external ones), "
        "then ingest, the processors (HEALTHSYNC_PROCESSOR_PROCESSES: two on two cores or "
        "more), archiver (to <run dir>/archive unless "
        "HEALTHSYNC_ARCHIVE_URL), API and the job scheduler, supervised. Kafka, Redis and "
        "the API use "
        "TLS 1.3 with a local CA made in <run dir>/certs (HEALTHSYNC_KAFKA_EMBEDDED_TLS, "
        "HEALTHSYNC_REDIS_EMBEDDED_TLS, HEALTHSYNC_API_TLS_ENABLED switch it off). "
        "Stored patient data is sealed with the keyring in <run dir>/keyring.json, and the "
        "API takes the admin key it writes to <run dir>/api-key. Redis keeps its data "
        "in <run dir>/redis; the embedded broker keeps topics in memory only (not durable), "
        "emptied once every stage has caught up when it passes "
        "HEALTHSYNC_KAFKA_EMBEDDED_MAX_MB (1024); past twice that, ingest is held (ERR 503) "
        "until they have. "
        "A process that dies is restarted with backoff. "
        "Ctrl-C or SIGTERM drains and stops everything.",
    )
    up.add_argument(
        "--simulate", type=int, default=0, metavar="N", help="also run N simulated devices"
    )
    up.add_argument(
        "--rate", type=float, default=1.0, help="readings/s per simulated device (default 1)"
    )
    up.add_argument(
        "--run-dir",
        default="run",
        help="where logs go, and the certificates, keyring, API key and audit log "
        "unless set (default ./run)",
    )
    up.set_defaults(func=cmd_up)
