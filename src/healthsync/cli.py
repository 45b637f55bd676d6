"""The `healthsync` command: one subcommand per process, plus `up` to run them all."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from healthsync import __version__
from healthsync.api.permissions import ROLES
from healthsync.config import Settings
from healthsync.errors import ConfigError, HealthSyncError

log = logging.getLogger("healthsync")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.load(args.config)
    if args.log_level:
        settings.log_level = args.log_level
    return settings


def cmd_up(args: argparse.Namespace) -> int:
    from healthsync.logs import setup_logging
    from healthsync.supervisor import Pipeline, Supervisor

    settings = _settings(args)
    setup_logging("up", "WARNING")
    pipeline = Pipeline(settings, Path(args.run_dir))
    supervisor = Supervisor(pipeline, simulate_devices=args.simulate, simulate_rate=args.rate)
    return supervisor.run()


def cmd_ingest(args: argparse.Namespace) -> int:
    from healthsync.ingest.server import serve
    from healthsync.kafka import ensure_topics
    from healthsync.logs import setup_logging

    settings = _settings(args)
    if args.host:
        settings.ingest.host = args.host
    if args.port is not None:
        settings.ingest.port = args.port
    setup_logging("ingest", settings.log_level)
    ensure_topics(settings.kafka)
    asyncio.run(serve(settings))
    return 0


class _Stage(Protocol):
    def run(self) -> None: ...

    def stop(self) -> None: ...


def _run_stage(
    args: argparse.Namespace, component: str, build: Callable[[Settings], _Stage]
) -> int:
    """Run a consumer stage until SIGTERM or SIGINT, which let it finish its batch."""
    from healthsync.kafka import ensure_topics
    from healthsync.logs import setup_logging

    settings = _settings(args)
    setup_logging(component, settings.log_level)
    ensure_topics(settings.kafka)
    stage = build(settings)
    signal.signal(signal.SIGTERM, lambda *_: stage.stop())
    signal.signal(signal.SIGINT, lambda *_: stage.stop())
    stage.run()
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    from healthsync.wiring import build_processor

    return _run_stage(args, "processor", build_processor)


def cmd_push(args: argparse.Namespace) -> int:
    from healthsync.wiring import build_pusher

    return _run_stage(args, "push", build_pusher)


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from healthsync.api.app import create_app
    from healthsync.logs import setup_logging

    settings = _settings(args)
    if args.host:
        settings.api.host = args.host
    if args.port is not None:
        settings.api.port = args.port
    setup_logging("api", settings.log_level)
    app = create_app(settings)
    ssl_context_factory = None
    if settings.api.tls_enabled:
        from healthsync.security.tls import server_context

        # Built before serving, so a missing certificate is one clear error, not a traceback;
        # uvicorn's own context could not be held to the TLS 1.3 policy.
        context = server_context(settings, "api")

        def ssl_context_factory(*_: object) -> ssl.SSLContext:
            return context

    uvicorn.run(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        # Forwarding headers are read by the audit, and only from api.trusted_proxies.
        proxy_headers=False,
        ssl_context_factory=ssl_context_factory,
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from healthsync.simulate import SimulationStats, run_simulation

    settings = _settings(args)
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

    stats = asyncio.run(
        run_simulation(
            host,
            port,
            devices=args.devices,
            rate=args.rate,
            duration=args.duration,
            count=args.count,
            seed=args.seed,
            progress=progress,
            ssl=tls,
        )
    )
    if not quiet:
        print(file=sys.stderr)
    print(stats.summary())
    return 0 if stats.sent and not stats.err and not stats.unanswered else 1


def cmd_certs(args: argparse.Namespace) -> int:
    """Create the local PKI, issue a device certificate, or revoke one."""
    from healthsync.security import certs

    directory: Path = args.dir or _settings(args).tls.dir
    if args.certs_command == "init":
        certs.init_pki(directory, hosts=args.host or ("localhost", "127.0.0.1"), force=args.force)
        print(f"CA, server certificates ({', '.join(certs.SERVICES)}) and CRL in {directory}")
    elif args.certs_command == "device":
        if args.csr is not None:
            csr = args.csr.read_bytes()
            print(
                certs.sign_device_csr(
                    directory, args.device_id, csr, days=args.days, force=args.force
                )
            )
        else:
            cert, key = certs.issue_device(
                directory, args.device_id, days=args.days, force=args.force
            )
            print(f"{cert}\n{key}")
    else:
        certs.revoke_device(directory, args.device_id)
        print(f"{args.device_id} revoked; {certs.crl_path(directory)} updated")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 if Redis and Kafka answer: a health check for service managers."""
    from redis import Redis

    from healthsync.kafka import check_broker

    settings = _settings(args)
    failures = []
    if settings.redis.url:
        try:
            options = settings.redis.client_options() | {"socket_timeout": 2}
            Redis.from_url(settings.redis.url, **options).ping()
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


def cmd_keys(args: argparse.Namespace) -> int:
    """Create a keyring, rotate its active key, or retire an old key."""
    from healthsync.security.codec import key_service
    from healthsync.security.crypto import Keyring, KeyringError

    crypto = _settings(args).crypto
    if args.keyring is not None:
        crypto.keyring_file = args.keyring
    if args.kms_key_id is not None:
        crypto.kms_key_id = args.kms_key_id
    path = crypto.keyring_file
    kms = key_service(crypto)
    if args.action == "init":
        if path.exists():
            raise KeyringError(f"{path} exists already; rotate its key instead")
        ring = Keyring.generate(kms, crypto.kms_key_id)
        done = f"created {path} with active key {ring.active}"
    elif args.action == "rewrap":
        from healthsync.keyring_redis import rewrap_redis

        return rewrap_redis(_settings(args), crypto)
    else:
        ring = Keyring.load(path, kms)
        if args.action == "rotate":
            done = f"active key is now {ring.rotate(kms)}; older keys still decrypt"
        elif args.key_id is None:
            raise KeyringError("retire needs the KEY_ID to retire")
        else:
            from healthsync.keyring_redis import refuse_if_in_use

            refuse_if_in_use(_settings(args), crypto, args.key_id)
            ring.retire(args.key_id)
            done = f"retired {args.key_id}: data sealed with it can no longer be read"
    ring.save(path)
    source = f" (KMS key {ring.kms_key_id})" if ring.kms_key_id else ""
    print(done + source)
    readable = ", ".join(sorted(ring.keys))
    retired = ", ".join(ring.retired) or "none"
    print(f"keys: {readable}; active: {ring.active}; retired: {retired}")
    print("restart the running stages to use the changed keyring")
    return 0


def cmd_fhir_validate(args: argparse.Namespace) -> int:
    """Validate FHIR resources (R4B models + the project's profile checks); 1 if any failed."""
    from healthsync.fhir.profiles import (
        FhirValidationError,
        read_resources,
        reference_of,
        validate,
    )

    failed = checked = 0
    for name in args.files or ["-"]:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
            resources = read_resources(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        for resource in resources:
            checked += 1
            try:
                validate(resource)
            except FhirValidationError as exc:
                failed += 1
                print(f"fail {exc.reference}")
                for problem in exc.problems:
                    print(f"  {problem}")
            else:
                print(f"ok {reference_of(resource)}")
    if not checked and not failed:
        print("no FHIR resources in the input", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Score the anomaly engine against a naive threshold on labelled scenarios."""
    import json

    from healthsync.evaluation.report import evaluate, render_table, to_json
    from healthsync.evaluation.scenario import scenario_paths

    settings = _settings(args)
    results = [evaluate(path, settings, args.seed) for path in scenario_paths(args.scenario)]
    if args.json:
        print(json.dumps(to_json(results), indent=2))
    else:
        print(render_table(results))
    return 1 if args.check and not all(r.passed for r in results) else 0


def cmd_apikey(args: argparse.Namespace) -> int:
    """Create, list or revoke the API keys services use; keys are stored hashed."""
    from healthsync.api.apikeys import ApiKeyStore
    from healthsync.errors import ConfigError

    path = args.keys_file or _settings(args).auth.api_keys_file
    if path is None:
        raise ConfigError("no API keys file: set HEALTHSYNC_AUTH_API_KEYS_FILE or --keys-file")
    store = ApiKeyStore(path)
    if args.action == "create":
        key = store.create(args.name, args.role)
        print(key)
        print(
            f"API key {args.name!r} ({args.role}) added to {path}; it is shown only now.",
            file=sys.stderr,
        )
    elif args.action == "list":
        for entry in store.load():
            print(f"{entry.name}\t{entry.role}\t{entry.created}")
    elif not store.revoke(args.name):
        print(f"no API key named {args.name!r} in {path}", file=sys.stderr)
        return 1
    return 0


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

    up = sub.add_parser(
        "up",
        help="run the whole pipeline on this machine",
        description="Start the embedded Kafka broker and Redis (unless "
        "HEALTHSYNC_KAFKA_BOOTSTRAP / HEALTHSYNC_REDIS_URL name external ones), "
        "then ingest, processor and API, supervised. Kafka, Redis and the API use "
        "TLS 1.3 with a local CA made in <run dir>/certs (HEALTHSYNC_KAFKA_EMBEDDED_TLS, "
        "HEALTHSYNC_REDIS_EMBEDDED_TLS, HEALTHSYNC_API_TLS_ENABLED switch it off). "
        "Stored patient data is sealed with the keyring in <run dir>/keyring.json, and the "
        "API takes the admin key it writes to <run dir>/api-key. "
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

    process = sub.add_parser(
        "process", help="run the stream processor (Kafka -> alerts, FHIR, Redis)"
    )
    process.set_defaults(func=cmd_process)

    push = sub.add_parser(
        "push",
        help="push FHIR resources to an EHR (HEALTHSYNC_FHIR_EHR_BASE_URL)",
        description="Consume the observations and alerts topics and send their FHIR resources "
        "to the EHR's FHIR server as transaction Bundles with conditional creates. Its own "
        "consumer group: a slow or absent EHR delays only the push.",
    )
    push.set_defaults(func=cmd_push)

    api = sub.add_parser(
        "api", help="run the REST API (HTTPS with tls.dir's api certificate by default)"
    )
    api.add_argument("--host", help="listen address (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="listen port (default 8000)")
    api.set_defaults(func=cmd_api)

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

    certs = sub.add_parser(
        "certs",
        help="create the local CA and certificates; issue and revoke device certificates",
        description="A local PKI for TLS: a CA, server certificates for ingest, api, redis "
        "and kafka, device client certificates and a CRL. Files are written 0600 and "
        "never replaced without --force.",
    )
    certs.add_argument("--dir", type=Path, help="where the PKI lives (default tls.dir: run/certs)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    certs_init = certs_sub.add_parser("init", help="create the CA, server certificates, CRL")
    certs_init.add_argument(
        "--host",
        action="append",
        help="name or address the servers are reached by (repeat; default localhost and 127.0.0.1)",
    )
    certs_init.add_argument("--force", action="store_true", help="replace an existing PKI")
    certs_device = certs_sub.add_parser(
        "device",
        help="issue a device client certificate",
        description="Without --csr a key is made too, written beside the PKI directory "
        "(<dir>-device-keys/), never next to ca.key: for tests and demos. Production "
        "devices make their own key and send a CSR; only the certificate is written.",
    )
    certs_device.add_argument("device_id", metavar="DEVICE_ID")
    certs_device.add_argument(
        "--csr", type=Path, help="the device's PEM certificate signing request"
    )
    certs_device.add_argument("--days", type=int, default=365, help="validity (default 365)")
    certs_device.add_argument(
        "--force", action="store_true", help="replace the device's certificate"
    )
    certs_revoke = certs_sub.add_parser(
        "revoke", help="put a device's certificate on the CRL (ingest refuses it within 1 s)"
    )
    certs_revoke.add_argument("device_id", metavar="DEVICE_ID")
    certs.set_defaults(func=cmd_certs)

    check = sub.add_parser("check", help="exit 0 if Redis and Kafka answer, 1 otherwise")
    check.set_defaults(func=cmd_check)

    keys = sub.add_parser(
        "keys",
        help="manage the keyring for encryption at rest",
        description="The AES-256 keys that seal PHI in Redis and Kafka. `init` creates the "
        "keyring file (mode 0600), `rotate` adds a new active key (older keys keep "
        "decrypting what they sealed; nothing is re-encrypted), `rewrap` seals everything "
        "in Redis (HEALTHSYNC_REDIS_URL) again under the active key, `retire KEY_ID` "
        "deletes a key, and refuses while Redis still holds a value it sealed. Kafka "
        "topics keep values sealed with a key until their retention ends. With "
        "--kms-key-id the keys are AWS KMS data keys and the file holds only their "
        "encrypted blobs.",
    )
    keys.add_argument("action", choices=["init", "rotate", "rewrap", "retire"])
    keys.add_argument("key_id", nargs="?", metavar="KEY_ID", help="the key to retire")
    keys.add_argument(
        "--keyring", type=Path, help="keyring file (default HEALTHSYNC_CRYPTO_KEYRING_FILE)"
    )
    keys.add_argument("--kms-key-id", help="KMS key for new data keys (init)")
    keys.set_defaults(func=cmd_keys)

    fhir_validate = sub.add_parser(
        "fhir-validate",
        help="validate FHIR resources against R4B and the vital-signs profiles",
        description="Read FHIR resources as JSON (one object, an array, JSON lines, or a "
        "Bundle, whose entries are checked) and validate each with the fhir.resources R4B "
        "models and HealthSync's profile checks. Prints `ok Type/id` or the problems; "
        "exits 1 if any resource failed.",
    )
    fhir_validate.add_argument(
        "files", nargs="*", metavar="FILE", help="JSON files; - or none reads stdin"
    )
    fhir_validate.set_defaults(func=cmd_fhir_validate)

    evaluate = sub.add_parser(
        "eval",
        help="measure alarm quality: the anomaly engine vs naive thresholds",
        description="Generate labelled scenarios (stable patients, deteriorations of known "
        "start and duration, artefacts) in virtual time, run the anomaly engine and a naive "
        "per-sample threshold over them, and print detected episodes, detection delay, "
        "false alerts per patient-hour and the reduction in alerts. Scenario files default "
        "to the repository's scenarios/*.toml.",
    )
    evaluate.add_argument(
        "--scenario",
        type=Path,
        action="append",
        metavar="PATH",
        help="scenario TOML file or directory (repeatable; default: scenarios/*.toml)",
    )
    evaluate.add_argument("--seed", type=int, help="use this seed instead of each file's")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument(
        "--check", action="store_true", help="exit 1 if the engine misses a scenario's target"
    )
    evaluate.set_defaults(func=cmd_eval)
    apikey = sub.add_parser(
        "apikey",
        help="manage the API keys services use (create, list, revoke)",
        description="API keys are bearer tokens for services, each with one role. The keys "
        "file (HEALTHSYNC_AUTH_API_KEYS_FILE, mode 0600) holds only their SHA-256 hashes; "
        "`create` prints the key once. A running API notices changes at once.",
    )
    apikey.add_argument("--keys-file", type=Path, help="the keys file (default from settings)")
    actions = apikey.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="add a key and print it (only this once)")
    create.add_argument("--name", required=True, help="who uses it, e.g. ward-dashboard")
    create.add_argument("--role", required=True, choices=list(ROLES))
    actions.add_parser("list", help="name, role and creation time of every key")
    revoke = actions.add_parser("revoke", help="remove a key; it stops working at once")
    revoke.add_argument("name")
    apikey.set_defaults(func=cmd_apikey)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except HealthSyncError as exc:
        print(f"healthsync: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
