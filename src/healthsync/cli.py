"""The `healthsync` command: one subcommand per process, plus `up` to run them all.

Each command lives in its own module under :mod:`healthsync.commands` and adds
itself with ``register(subparsers)``; a new command is one module and one
entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from healthsync import __version__, compiled, status
from healthsync.commands import (
    api,
    apikey,
    archive,
    certs,
    check,
    consumers,
    evaluate,
    fhir_validate,
    ingest,
    jobs,
    keys,
    simulate,
    up,
)
from healthsync.commands.base import Subparsers
from healthsync.errors import HealthSyncError

# In the order `healthsync --help` lists them.
COMMANDS: tuple[Callable[[Subparsers], None], ...] = (
    up.register,
    ingest.register,
    consumers.register,  # process, push
    archive.register,
    api.register,
    simulate.register,
    certs.register,
    check.register,
    keys.register,
    fhir_validate.register,
    evaluate.register,
    apikey.register,
    jobs.register,  # job, scheduler, aws
    status.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="healthsync",
        description="Real-time patient-vitals pipeline. Settings come from HEALTHSYNC_* "
        "environment variables (e.g. HEALTHSYNC_KAFKA_BOOTSTRAP, HEALTHSYNC_REDIS_URL) "
        "and an optional TOML file.",
    )
    parser.add_argument("--version", action="version", version=f"healthsync {__version__}")
    parser.add_argument("--config", type=Path, help="TOML settings file (or HEALTHSYNC_CONFIG)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        compiled.check()  # never the old code of a module edited since it was compiled
        return int(args.func(args))
    except HealthSyncError as exc:
        print(f"healthsync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
