"""`healthsync check`: a health check for service managers."""

from __future__ import annotations

import argparse
import sys

from healthsync.commands.base import Subparsers, settings_from
from healthsync.errors import HealthSyncError


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 if Redis and Kafka answer: a health check for service managers."""

    from healthsync.kafka import check_broker
    from healthsync.redis_client import connect

    settings = settings_from(args)
    failures = []
    if settings.redis.url:
        try:
            connect(settings.redis.model_copy(update={"timeout_s": 2.0})).ping()
        except Exception as exc:  # noqa: BLE001
            failures.append(f"redis: {exc}")
    else:
        failures.append("redis: no URL configured (HEALTHSYNC_REDIS_URL)")
    try:
        check_broker(settings.kafka)
    except HealthSyncError as exc:
        failures.append(f"kafka: {exc}")
    for failure in failures:
        print(failure, file=sys.stderr)
    if not failures:
        print("ok")
    return 1 if failures else 0


def register(sub: Subparsers) -> None:
    check = sub.add_parser("check", help="exit 0 if Redis and Kafka answer, 1 otherwise")
    check.set_defaults(func=cmd_check)
