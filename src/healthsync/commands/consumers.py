"""The Kafka consumer stages: `healthsync process` and `healthsync push`.

:func:`run_stage` is how any consumer stage runs from the command line.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from typing import Protocol

from healthsync.commands.base import Subparsers, settings_from
from healthsync.config import Settings


class Stage(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def run_stage(args: argparse.Namespace, component: str, build: Callable[[Settings], Stage]) -> int:
    """Run a consumer stage until SIGTERM or SIGINT, which let it finish its batch."""
    from healthsync.kafka import ensure_topics
    from healthsync.logs import setup_logging

    settings = settings_from(args)
    setup_logging(component, settings.log_level)
    ensure_topics(settings.kafka)
    stage = build(settings)
    signal.signal(signal.SIGTERM, lambda *_: stage.stop())
    signal.signal(signal.SIGINT, lambda *_: stage.stop())
    stage.run()
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from healthsync.collector import collect_less
    from healthsync.stream.processor import Processor
    from healthsync.wiring import build_processor

    def build(settings: Settings) -> Processor:
        processor = build_processor(settings)
        collect_less()  # after building, so that what was built is frozen too
        return processor

    return run_stage(args, "processor", build)


def cmd_push(args: argparse.Namespace) -> int:
    from healthsync.wiring import build_pusher

    return run_stage(args, "push", build_pusher)


def register(sub: Subparsers) -> None:
    process = sub.add_parser(
        "process", help="run the stream processor (Kafka -> alerts, FHIR, Redis)"
    )
    process.set_defaults(func=cmd_process)

    push = sub.add_parser(
        "push",
        help="push FHIR resources to an EHR (HEALTHSYNC_FHIR_EHR_BASE_URL)",
        description="Consume the observations and alerts topics and send their FHIR resources "
        "to the EHR's FHIR server as transaction Bundles of conditional updates. Its own "
        "consumer group: a slow or absent EHR delays only the push. A resource the EHR "
        "refuses goes to the dead-letter topic with its reason "
        "(healthsync_ehr_refused_total), and the push goes on.",
    )
    push.set_defaults(func=cmd_push)
