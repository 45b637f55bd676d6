"""`healthsync up`: the whole pipeline on one machine, each stage its own process.

:class:`Pipeline` starts the embedded broker and Redis (unless external ones
are configured), creates the topics, then runs ingest, processor, API and
optionally the device simulator as child processes, and stops them in order:
devices first, then ingest (which answers what it has in flight), the
processor, the API, and last Redis and the broker. The tests and the
benchmark use it too; :mod:`healthsync.foreground` runs it at a terminal.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from redis.exceptions import RedisError

from healthsync.api.apikeys import ApiKeyStore, ensure_local_key
from healthsync.children import Child
from healthsync.config import Settings
from healthsync.errors import ConfigError, HealthSyncError
from healthsync.front import IngestFront, new_front
from healthsync.kafka import KafkaUnavailableError, ensure_topics
from healthsync.redis_client import connect
from healthsync.runstate import hold_run_dir
from healthsync.security.certs import (
    ca_cert_path,
    init_pki,
    issue_stage_client,
    pki_exists,
    service_paths,
)
from healthsync.security.codec import ensure_keyring
from healthsync.security.tls import openssl_conf_env
from healthsync.stack import (
    LOCALHOST,
    EmbeddedStack,
    RedisDisk,
    RedisUser,
    ServerTls,
    Service,
    reserve_ports,
    start_broker,
    start_redis,
    wait_for_port,
)
from healthsync.startup import check_before_start
from healthsync.watchdog import restart_delay

_TOPIC_ATTEMPTS = 5
# The consumers' session timeout against the embedded broker, unless one is configured.
# Tansu answers a JoinGroup only once half the member's session timeout has passed (it
# waits that long for other members), in steps of a second: 3 s with the usual 6 s, at
# every start and after every recycle, while readings wait. 2 s joins in 1 s and still
# leaves three heartbeats per session. (A Kafka cluster refuses sessions under its
# group.min.session.timeout.ms, 6 s by default, so this is the embedded broker's only.)
EMBEDDED_SESSION_TIMEOUT_MS = 2000
# The stages that consume topics: after the broker restarts empty they start afresh.
CONSUMER_STAGES = ("process", "archive", "push")
STAGES = ("ingest", "process", "archive", "api", "scheduler")
# Order matters on shutdown: stop producers of data before its consumers.
_STOP_ORDER = ("simulate", "ingest", "process", "archive", "push", "api")


@dataclass
class Pipeline:
    """The broker, Redis and the stages, as processes on this machine."""

    settings: Settings
    run_dir: Path
    stack: EmbeddedStack = field(default_factory=EmbeddedStack)
    children: dict[str, Child] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # The admin API key `up` made for local use, when no authentication was configured.
    local_key_file: Path | None = None
    # HAProxy and the ingest replicas behind it, when `ingest.replicas` > 1.
    front: IngestFront | None = None
    # The run directory's lock, held from start to stop (runstate.hold_run_dir).
    _lock: IO[str] | None = None

    @property
    def logs(self) -> Path:
        return self.run_dir / "logs"

    def start(self, stages: tuple[str, ...] | None = None) -> None:
        """Start the services, then the stages (by default all, and the EHR push if configured)."""
        settings = self.settings
        if stages is None:
            stages = STAGES + (("push",) if settings.fhir.ehr_base_url else ())
        check_before_start(settings, stages)
        self.logs.mkdir(parents=True, exist_ok=True)
        if self._lock is None:
            self._lock = hold_run_dir(self.run_dir)
        # The ports a user configured are not free ones for the broker, Redis or HAProxy.
        ingest = settings.ingest
        reserve_ports(
            ingest.port,
            ingest.tls_port,
            ingest.check_port,
            ingest.front_stats_port,
            settings.api.port,
        )
        self._prepare_certificates(stages)
        self._start_redis()
        self._start_broker()
        if "api" in stages:
            self._local_auth()
        if "keyring_file" not in settings.crypto.model_fields_set:
            # Like the certificates: the run dir's keyring, created on first start.
            settings.crypto.keyring_file = (self.run_dir / "keyring.json").resolve()
        ensure_keyring(settings.crypto)
        if "log_dir" not in settings.jobs.model_fields_set:
            settings.jobs.log_dir = self.logs / "jobs"
        if "url" not in settings.archive.model_fields_set:
            settings.archive.url = f"file://{(self.run_dir / 'archive').resolve()}"
        self.env = self._stage_env()
        for name in stages:
            self._start_stage(name)
        self.wait_listening(stages)
        if self.front is not None:
            self.stack.ingest_front = self.front.start(settings.ingest, self.run_dir, self.logs)

    def _start_ingest_replicas(self) -> None:
        """`ingest.replicas` ingest processes on private loopback ports (see front.py)."""
        self.front = new_front(self.settings.ingest)
        for replica in self.front.replicas:
            self.start_child(replica.name, stage="ingest", env=replica.env())

    def _start_stage(self, name: str) -> None:
        """A stage's processes: ingest's replicas and the processors as configured."""
        if name == "ingest" and self.settings.ingest.replicas > 1:
            self._start_ingest_replicas()
        elif name == "process":
            self._start_processors()
        else:
            self.start_child(name)

    def _start_processors(self) -> None:
        """`processor.processes` processors in the one consumer group: `process`, then
        `process-2` and on, sharing the vitals topic's partitions."""
        self.start_child("process")
        for n in range(2, self.settings.processor.processes + 1):
            self.start_child(f"process-{n}", stage="process")

    def _start_redis(self) -> None:
        """The embedded Redis, unless a URL names another: its data in the run dir, one ACL
        user, and with TLS client certificates required."""
        settings = self.settings
        if settings.redis.url is not None:
            return
        tls = self._server_tls("redis") if settings.redis.embedded_tls else None
        if tls is not None:  # only stages with a certificate from the CA get in
            tls = replace(tls, client_certs="required")
        self.stack.redis_user = RedisUser("healthsync", secrets.token_urlsafe(32))
        self.stack.redis = start_redis(
            log_dir=self.logs,
            tls=tls,
            disk=RedisDisk(self.run_dir / "redis", settings.redis.embedded_appendfsync),
            user=self.stack.redis_user,
        )
        settings.redis.url = self.stack.redis_url
        if tls is not None and settings.redis.tls_ca_file is None:
            settings.redis.tls_ca_file = tls.ca
            # This process's own connection (status, checks); stages get theirs in start_child.
            cert, key = issue_stage_client(settings.tls.dir, "supervisor")
            settings.redis.tls_cert_file, settings.redis.tls_key_file = cert, key

    def _start_broker(self) -> None:
        """The embedded broker unless a bootstrap names another; then the topics."""
        settings = self.settings
        if settings.kafka.bootstrap is None:
            tls = self._server_tls("kafka") if settings.kafka.embedded_tls else None
            self.stack.broker = start_broker(log_dir=self.logs, tls=tls, run_dir=self.run_dir)
            settings.kafka.bootstrap = self.stack.bootstrap
            if tls is not None:
                ssl = {"security.protocol": "SSL", "ssl.ca.location": str(tls.ca)}
                settings.kafka.client = ssl | settings.kafka.client
            if "session_timeout_ms" not in settings.processor.model_fields_set:
                settings.processor.session_timeout_ms = EMBEDDED_SESSION_TIMEOUT_MS
        ensure_topics(settings.kafka)
        if self.stack.broker is not None:
            self.forget_offsets()

    def wait_listening(self, stages: tuple[str, ...]) -> None:
        """Return once the started `stages` accept connections on every port they open."""
        settings = self.settings
        if "ingest" in stages and self.front is not None:
            for replica in self.front.replicas:  # its readiness port opens once it listens
                wait_for_port(LOCALHOST, replica.check_port, 30, self.process(replica.name))
        elif "ingest" in stages:
            # Every port it opens: it binds them one after the other, so one listening
            # says nothing of the next (a device once found the TLS port closed).
            ingest = settings.ingest
            listeners = [(ingest.host, ingest.port)] if ingest.plain_enabled else []
            if ingest.tls_enabled or not listeners:
                listeners.append((ingest.tls_host, ingest.tls_port))
            for host, port in listeners:
                wait_for_port(host, port, 30, self.process("ingest"))
        if "api" in stages:
            wait_for_port(settings.api.host, settings.api.port, 30, self.process("api"))

    def forget_offsets(self) -> None:
        """Drop the store's record of how far it reached in each partition.

        A fresh in-memory broker numbers its offsets from 0 again; the old
        record would hide a real gap from the processor (see store/live.py).
        """
        client = connect(self.settings.redis)
        try:
            keys, topic = self.settings.redis.keys, self.settings.kafka.vitals_topic
            for group in keys.all_groups:  # one at a time: a cluster has them on several nodes
                for partition in range(self.settings.kafka.partitions):
                    client.delete(keys.offsets(group, topic, partition))
            client.delete(keys.shared_offsets)  # as an earlier version recorded them
        finally:
            client.close()

    def on_service_restart(self, service: Service) -> None:
        """After the embedded broker came back empty: its topics again, offsets from 0.

        The consumers start afresh too: their positions and group belong to the
        broker that is gone, and a position past the new topic's end would wait
        there instead of reading what arrives.
        """
        if service.name != "broker":
            return
        for attempt in range(_TOPIC_ATTEMPTS):
            try:
                ensure_topics(self.settings.kafka)
                self.forget_offsets()
                break
            except (KafkaUnavailableError, RedisError) as exc:
                if attempt == _TOPIC_ATTEMPTS - 1:
                    raise HealthSyncError(f"broker restarted but not ready: {exc}") from exc
                time.sleep(1.0)
        # Every consumer of those stages: `process-2` and on as well as `process`. All are
        # told to stop at once, and all have stopped before any starts: stopped one by
        # one, each could take its whole stop timeout against the broker that is gone,
        # while those already restarted read the new topics alone.
        consumers = [c for c in self.children.values() if c.stage in CONSUMER_STAGES and c.alive]
        for child in consumers:
            child.terminate()
        for child in consumers:
            child.stop()
        for child in consumers:
            child.start(self.env)

    def _stage_env(self) -> dict[str, str]:
        """The environment every stage starts with: the settings, made explicit."""
        settings = self.settings
        if settings.ingest.plain_enabled is None:
            settings.ingest.plain_enabled = True  # the demo's netcat port, on loopback
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
        env.update(settings.to_env())
        if "OPENSSL_CONF" not in env:  # an operator's own OpenSSL configuration wins
            env.update(openssl_conf_env(self.run_dir))
        return env

    def _prepare_certificates(self, stages: tuple[str, ...]) -> None:
        """The PKI, when a service about to start needs one (see ensure_pki)."""
        settings = self.settings
        needed = (
            (settings.kafka.bootstrap is None and settings.kafka.embedded_tls)
            or (settings.redis.url is None and settings.redis.embedded_tls)
            or ("api" in stages and settings.api.tls_enabled)
            or ("ingest" in stages and settings.ingest.tls_enabled)
        )
        if needed:
            self.ensure_pki()

    def ensure_pki(self) -> None:
        """Certificates for the TLS services: `tls.dir` if set, else <run dir>/certs,
        created there on first use so that TLS is on without a setup step."""
        tls = self.settings.tls
        if "dir" not in tls.model_fields_set:
            tls.dir = (self.run_dir / "certs").resolve()
        if not pki_exists(tls.dir):
            hosts = ["localhost", "127.0.0.1"]
            if self.settings.ingest.tls_host not in (*hosts, "0.0.0.0", "::", ""):
                hosts.append(self.settings.ingest.tls_host)
            init_pki(tls.dir, hosts=hosts)

    def _local_auth(self) -> None:
        """With no authentication configured, an admin key in the run directory.

        The API never runs open; this is the embedded default, like the broker:
        a keys file and an audit log in the run directory, and one key a person
        at this machine can read.
        """
        auth = self.settings.auth
        if auth.jwt_enabled or auth.api_keys_file is not None:
            return
        auth.api_keys_file = self.run_dir / "api-keys.json"
        if auth.audit_log_file is None:
            auth.audit_log_file = self.run_dir / "audit.jsonl"
        self.local_key_file = self.run_dir / "api-key"
        ensure_local_key(ApiKeyStore(auth.api_keys_file), self.local_key_file)

    def _server_tls(self, service: str) -> ServerTls:
        cert, key = service_paths(self.settings.tls.dir, service)
        return ServerTls(cert, key, ca_cert_path(self.settings.tls.dir))

    @property
    def api_url(self) -> str:
        api = self.settings.api
        return f"{'https' if api.tls_enabled else 'http'}://{api.host}:{api.port}"

    def start_child(
        self, name: str, *args: str, stage: str | None = None, env: dict[str, str] | None = None
    ) -> Child:
        """Start `healthsync <stage> args` (stage: `name`) as the child `name`."""
        child = self.children.get(name)
        if child is None:
            argv = [sys.executable, "-m", "healthsync", stage or name, *args]
            child = self.children[name] = Child(name, argv, self.logs / f"{name}.log")
            child.env = self._redis_client_env(stage or name) | (env or {})
            if (stage or name) == "ingest":
                child.env["HEALTHSYNC_INGEST_HOLD_FILE"] = str(self.hold_file(name))
            if (stage or name) in CONSUMER_STAGES:
                child.joined_file = self.joined_file(name)
                child.env["HEALTHSYNC_KAFKA_JOINED_FILE"] = str(child.joined_file)
        child.start(self.env)
        return child

    def _redis_client_env(self, stage: str) -> dict[str, str]:
        """The stage's own client certificate, when the embedded Redis requires one."""
        redis = self.stack.redis
        if redis is None or not redis.tls:
            return {}
        cert, key = issue_stage_client(self.settings.tls.dir, stage)
        return {
            "HEALTHSYNC_REDIS_TLS_CERT_FILE": str(cert),
            "HEALTHSYNC_REDIS_TLS_KEY_FILE": str(key),
        }

    def start_simulator(self, devices: int, rate: float) -> Child:
        ingest = self.settings.ingest
        if not ingest.plain_enabled:
            raise ConfigError("the simulated devices send to the plaintext port, which is off")
        return self.start_child(
            "simulate",
            *("--devices", str(devices), "--rate", str(rate)),
            *("--host", ingest.host, "--port", str(ingest.port), "--quiet"),
        )

    def hold_file(self, name: str) -> Path:
        """Where the ingest process `name` says it is held (see recycle.py)."""
        return self.run_dir / f"{name}.held"

    def joined_file(self, name: str) -> Path:
        """Where the consumer process `name` says it has joined its group (see
        stream/membership.py)."""
        return self.run_dir / f"{name}.joined"

    def restart_dead(self, say: Callable[[str], None], skip: Collection[str] = ()) -> None:
        """Start again each child that died (not the ones named in `skip`), with backoff;
        a simulator that finished its run is left stopped."""
        now = time.monotonic()
        for child in self.children.values():
            if child.process is None or child.alive or now < child.next_start or child.name in skip:
                continue
            code = child.process.returncode
            child.stop()
            if child.name == "simulate" and code == 0:
                continue  # the simulator finished its run
            child.restarts += 1
            # A child that keeps dying waits longer each time: 2, 4 ... up to 30 s.
            child.next_start = now + restart_delay(child.restarts + 1)
            say(f"{child.name} exited with code {code}; restart {child.restarts}")
            child.start(self.env)

    def process(self, name: str) -> subprocess.Popen[bytes]:
        process = self.children[name].process
        if process is None:
            raise RuntimeError(f"{name} was never started")
        return process

    def stop(self) -> None:
        """Stop in order; the ingest front stops accepting before the replicas drain."""
        rank = {stage: n for n, stage in enumerate(_STOP_ORDER)}
        ordered = sorted(self.children.values(), key=lambda c: rank.get(c.stage, len(rank)))
        for child in ordered:
            if child.stage == "ingest" and self.front is not None:
                self.front.stop_accepting()
            child.stop()
        if self.front is not None:
            self.front.wait_stopped()
        self.stack.stop()
        if self._lock is not None:
            self._lock.close()  # and with it the lock
            self._lock = None
