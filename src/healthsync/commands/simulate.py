"""`healthsync simulate`: bedside monitors that send readings to the ingest server."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from healthsync.commands.base import Subparsers, settings_from
from healthsync.errors import ConfigError


def cmd_simulate(args: argparse.Namespace) -> int:
    from healthsync.simulate import (
        IngestEndpoint,
        SimulationOptions,
        SimulationStats,
        run_simulation,
    )

    settings = settings_from(args)
    tls = None
    if args.tls:
        from healthsync.security.tls import client_context

        if (args.cert is None) != (args.key is None):
            raise ConfigError("--cert and --key go together")
        tls = client_context(settings, cert=args.cert, key=args.key, ca=args.ca)
        host = args.host or settings.ingest.tls_host
        port = args.port if args.port is not None else settings.ingest.tls_port
    else:
        host = args.host or settings.ingest.host
        port = args.port if args.port is not None else settings.ingest.port
    quiet = args.quiet

    def progress(stats: SimulationStats) -> None:
        if not quiet:
            print("\r" + stats.progress_line(), end="", file=sys.stderr, flush=True)

    options = SimulationOptions(
        devices=args.devices,
        rate=args.rate,
        duration=args.duration,
        count=args.count,
        seed=args.seed,
    )
    stats = asyncio.run(run_simulation(IngestEndpoint(host, port, tls), options, progress=progress))
    if not quiet:
        print(file=sys.stderr)
    print(stats.summary())
    return 0 if stats.sent and not stats.err and not stats.unanswered else 1


def register(sub: Subparsers) -> None:
    simulate = sub.add_parser(
        "simulate", help="simulate bedside monitors sending to the ingest server"
    )
    simulate.add_argument(
        "--devices", type=int, default=10, help="concurrent device connections (default 10)"
    )
    simulate.add_argument(
        "--rate", type=float, default=1.0, help="readings/s per device (default 1)"
    )
    simulate.add_argument("--duration", type=float, help="stop after this many seconds")
    simulate.add_argument("--count", type=int, help="stop after this many readings per device")
    simulate.add_argument("--seed", type=int, help="random seed, for reproducible runs")
    simulate.add_argument("--host", help="ingest host (default from settings)")
    simulate.add_argument("--port", type=int, help="ingest port (default from settings)")
    simulate.add_argument("--quiet", action="store_true", help="no progress line")
    simulate.add_argument(
        "--tls", action="store_true", help="connect to the TLS port (ingest.tls_port)"
    )
    simulate.add_argument("--cert", type=Path, help="client certificate for --tls")
    simulate.add_argument("--key", type=Path, help="client key for --tls")
    simulate.add_argument("--ca", type=Path, help="CA to check the server (default tls.dir)")
    simulate.set_defaults(func=cmd_simulate)
