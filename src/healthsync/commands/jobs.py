"""`healthsync job`, `scheduler` and `aws`: `register` adds them to the CLI's parser.

It sits with the composition root: it builds jobs, runners and stores from
the settings and may hand jobs parts of other stages (the engine's replay).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.jobs.base import Job, JobParams
from healthsync.names import JOBS
from healthsync.redis_client import connect
from healthsync.store.runs import JobBusyError, RunStore, new_run_id, valid_run_id

log = logging.getLogger("healthsync")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_BUSY = 75  # EX_TEMPFAIL: try again when the running one is done


def register(sub: Any) -> None:
    """Add `job`, `scheduler` and `aws` to the subparsers of the `healthsync` parser."""
    job = sub.add_parser(
        "job",
        help="run a compute job now, or list and show job runs",
        description="Jobs read the archive for a period and write their output under "
        "<jobs.output_url>/jobs/<name>/<run id>/, with a run record in Redis. A rerun with "
        "the same --run-id replaces its output. Exit status: 0 done, 1 the job failed, "
        "2 bad arguments or settings, 75 the job is already running.",
    )
    actions = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    run = actions.add_parser("run", help="run one job and wait for it")
    run.add_argument("name", metavar="NAME", help="the job: " + ", ".join(JOBS))
    run.add_argument("--since", type=_when, help="start of the period (ISO 8601 or epoch s)")
    run.add_argument("--until", type=_when, help="end of the period (default now)")
    run.add_argument(
        "--patients", help="comma-separated patient ids to limit the run to (default all)"
    )
    run.add_argument("--run-id", help="names the run; the same id replaces its output")
    run.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a job option"
    )
    run.add_argument("--trigger", default="cli", help=argparse.SUPPRESS)
    run.add_argument("--runner", default="cli", help=argparse.SUPPRESS)
    run.set_defaults(func=cmd_job_run)
    listing = actions.add_parser("list", help="recent runs, newest first")
    listing.add_argument("--limit", type=int, default=20)
    listing.set_defaults(func=cmd_job_list)

    scheduler = sub.add_parser(
        "scheduler",
        help="start jobs at the times [jobs.schedule] names (and export to CloudWatch)",
        description="Runs each job of [jobs.schedule] (cron expressions, UTC) on "
        "HEALTHSYNC_JOBS_RUNNER: local (a subprocess; output in jobs.log_dir) or aws (the "
        "Lambda launcher). A job never runs twice at once; slots missed while the "
        "scheduler was down are caught up once. With HEALTHSYNC_CLOUDWATCH_ENABLED it also "
        "sends the pipeline's metrics to CloudWatch every HEALTHSYNC_CLOUDWATCH_INTERVAL_S "
        "and the stages' logs (the log files beside jobs.log_dir) to CloudWatch Logs.",
    )
    scheduler.add_argument("--once", action="store_true", help="one tick, then wait for runs")
    scheduler.set_defaults(func=cmd_scheduler)

    aws = sub.add_parser("aws", help="AWS deployment helpers")
    aws_actions = aws.add_subparsers(dest="aws_command", required=True, metavar="ACTION")
    package = aws_actions.add_parser(
        "package",
        help="build the Lambda deployment zip (jobs launcher, S3 Object Lambda)",
        description="Write a zip with the healthsync package and redis-py for the Lambda "
        "functions whose handlers are healthsync.aws.lambda_jobs.handler and "
        "healthsync.aws.object_lambda.handler (Python runtime, which provides boto3). Built "
        "from this environment, no network needed. The Object Lambda also needs a layer "
        "with pyarrow, numpy, orjson, cryptography, pydantic and pydantic-settings for the "
        "Lambda "
        "platform (docs/DEPLOY-AWS.md).",
    )
    package.add_argument(
        "--output", type=Path, default=Path("dist/healthsync-jobs-lambda.zip"), help="zip path"
    )
    package.set_defaults(func=cmd_aws_package)
    research = aws_actions.add_parser(
        "research-key",
        help="write the research keys for the S3 Object Lambda's secret",
        description="Derive the research set's pseudonym and time-shift keys from the "
        "keyring (HEALTHSYNC_CRYPTO_KEYRING_FILE) and write them as JSON, mode 0600, for the "
        "Secrets Manager secret that HEALTHSYNC_RESEARCH_KEY_SECRET names "
        "(healthsync.aws.object_lambda.handler). They are not the keyring: whoever holds "
        "them can make research pseudonyms, but cannot open the live store or the "
        "identified archive. Delete the file once the secret holds it.",
    )
    research.add_argument("--output", type=Path, required=True, help="file to write (0600)")
    research.set_defaults(func=cmd_aws_research_key)


def jobs_for(settings: Settings) -> dict[str, Job]:
    """Every job; reprocess gets the stream stage's engine replay from here, the root,
    verify a reader of the vitals topic, and compact the archive."""
    from functools import partial

    from healthsync.jobs.catalog import catalog
    from healthsync.jobs.compact import Compact
    from healthsync.jobs.reprocess import Reprocess
    from healthsync.jobs.verify import TopicCounter, Verify
    from healthsync.security.codec import Codec
    from healthsync.store.archive.setup import Archive
    from healthsync.stream.replay import replay

    codec = Codec.from_settings(settings)
    counter = TopicCounter(settings.kafka, codec)
    processed = None
    if settings.redis.url:
        from healthsync.store.hourly import ProcessedByHour

        processed = ProcessedByHour(_runs(settings).client, settings.redis.keys)
    return catalog(
        {
            # The processor's alert ids are keyed: so are the replay's, to match them.
            "reprocess": Reprocess(partial(replay, id_key=codec.id_key)),
            "verify": Verify(counter, processed),
            "compact": Compact(
                lambda: Archive.from_settings(settings),
                settings.archive.day_settle_s,
                settings.archive.day_row_group_rows,
            ),
        },
        settings.anomaly.margins,
    )


def _when(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ISO 8601 or epoch seconds") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: give a time zone (e.g. Z)")
    return moment.timestamp()


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.load(args.config)
    if args.log_level:
        settings.log_level = args.log_level
    return settings


def _runs(settings: Settings) -> RunStore:
    if not settings.redis.url:
        raise ConfigError("jobs keep their run records in Redis: set HEALTHSYNC_REDIS_URL")
    client = connect(settings.redis)
    return RunStore(client, settings.redis.keys)


def _params(args: argparse.Namespace, settings: Settings) -> JobParams:
    until = args.until if args.until is not None else time.time()
    since = args.since if args.since is not None else until - settings.jobs.default_period_s
    if since >= until:
        raise ConfigError("--since must be before --until")
    run_id = args.run_id or new_run_id(args.name)
    if not valid_run_id(run_id):
        raise ConfigError(f"run id {run_id!r}: letters, digits, '.', '_' and '-' only")
    options: dict[str, str] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE")
        options[key] = value
    patients = frozenset(p.strip() for p in (args.patients or "").split(",") if p.strip())
    return JobParams(run_id, since, until, patients, options)


def cmd_job_run(args: argparse.Namespace) -> int:
    from healthsync.jobs.execute import Executor, JobFailedError
    from healthsync.logs import setup_logging
    from healthsync.security.codec import Codec
    from healthsync.store.job_files import jobs_store
    from healthsync.store.period import LiveWindow
    from healthsync.store.records import Records

    settings = _settings(args)
    setup_logging("jobs", settings.log_level)
    jobs = jobs_for(settings)
    job = jobs.get(args.name)
    if job is None:
        print(f"healthsync job: no job {args.name!r}; known: {', '.join(jobs)}", file=sys.stderr)
        return EXIT_USAGE
    params = _params(args, settings)
    runs = _runs(settings)
    codec = Codec.from_settings(settings)
    reader = LiveWindow(runs.client, Records(codec))
    try:
        store = jobs_store(settings)
        executor = Executor(runs, store, reader, settings.jobs.lock_ttl_s, codec)
        record = executor.run(job, params, runner=args.runner, trigger=args.trigger)
    except JobBusyError as exc:
        print(f"healthsync job: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except JobFailedError as exc:
        print(f"healthsync job: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except RedisError as exc:
        # Without Redis there is no lock and no run record: nothing ran.
        print(f"healthsync job: Redis unavailable, {args.name} not run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{record.run_id} {record.status} -> {record.output}")
    return 0


def cmd_job_list(args: argparse.Namespace) -> int:
    runs = _runs(_settings(args))
    for record in runs.recent(args.limit):
        finished = "" if record.finished_at is None else _stamp(record.finished_at)
        print(f"{record.run_id}\t{record.job}\t{record.status}\t{finished}\t{record.message}")
    return 0


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def cmd_aws_package(args: argparse.Namespace) -> int:
    from healthsync.aws.package import HANDLER, OBJECT_LAMBDA_HANDLER, OBJECT_LAMBDA_LAYER, build

    path = build(args.output)
    print(f"{path} ({path.stat().st_size} bytes), handler {HANDLER}")
    layer = ", ".join(OBJECT_LAMBDA_LAYER)
    print(f"also handler {OBJECT_LAMBDA_HANDLER}, with a layer of {layer}")
    return 0


def cmd_aws_research_key(args: argparse.Namespace) -> int:
    import os

    from healthsync.aws.object_lambda import research_secret
    from healthsync.security.codec import key_service
    from healthsync.security.keyring import Keyring
    from healthsync.store.archive.deidentify import Deidentifier

    crypto = _settings(args).crypto
    ring = Keyring.load(crypto.keyring_file, key_service(crypto))
    path: Path = args.output
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(research_secret(Deidentifier.from_keyring(ring)))
    print(f"wrote the research keys to {path} (0600); put them in the function's secret:")
    print(
        f"  aws secretsmanager put-secret-value --secret-id <secret> --secret-string file://{path}"
    )
    return 0


def build_runner(settings: Settings, runs: RunStore) -> Any:
    from healthsync.jobs.runners import LambdaRunner, LocalRunner

    jobs = settings.jobs
    if jobs.runner == "aws":
        return LambdaRunner(jobs.lambda_function, jobs.aws_region)
    return LocalRunner(runs, jobs.log_dir, jobs.timeout_s)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from healthsync.jobs.scheduler import Scheduler
    from healthsync.logs import setup_logging

    settings = _settings(args)
    setup_logging("scheduler", settings.log_level)
    unknown = sorted(set(settings.jobs.schedule) - set(JOBS))
    if unknown:
        raise ConfigError(f"[jobs.schedule] names unknown jobs: {', '.join(unknown)}")
    runs = _runs(settings)
    runner = build_runner(settings, runs)
    scheduler = Scheduler(
        settings.jobs.schedule,
        runner,
        runs,
        lock_ttl_s=settings.jobs.lock_ttl_s,
        period_s=settings.jobs.default_period_s,
        known=frozenset(JOBS),
    )
    if args.once:
        scheduler.tick()
        if hasattr(runner, "join"):
            runner.join()
        return 0
    exporter = _cloudwatch(settings, runs)
    signal.signal(signal.SIGTERM, lambda *_: scheduler.stop())
    signal.signal(signal.SIGINT, lambda *_: scheduler.stop())
    try:
        scheduler.run(settings.jobs.tick_s)
    finally:
        if exporter is not None:
            exporter.stop()
    return 0


def _cloudwatch(settings: Settings, runs: RunStore) -> Any:
    """The CloudWatch exporter, started, when HEALTHSYNC_CLOUDWATCH_ENABLED is true."""
    if not settings.cloudwatch.enabled:
        return None
    from healthsync.aws.cloudwatch import PipelineMetrics
    from healthsync.aws.exporter import build_exporter

    metrics = PipelineMetrics(runs.client, settings.redis.keys, runs)
    exporter = build_exporter(settings.cloudwatch, metrics, settings.jobs.log_dir.parent)
    exporter.start()
    return exporter
