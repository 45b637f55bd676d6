"""`healthsync up` at a terminal: a :class:`~healthsync.supervisor.Pipeline` in the foreground.

:class:`Supervisor` adds what a person at a terminal wants: addresses, a live
summary that names what is down, restarts of a child or an embedded service
that died (with backoff), `<run dir>/state.json` for `healthsync status`, and
an orderly stop on SIGINT/SIGTERM.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.exceptions import RedisError

from healthsync.recycle import BrokerRecycler, Interrupted
from healthsync.redis_client import connect
from healthsync.runstate import ProcessEntry, RunState
from healthsync.supervisor import Pipeline
from healthsync.watchdog import ServiceWatchdog


@dataclass
class Supervisor:
    """Runs a Pipeline in the foreground until SIGINT or SIGTERM."""

    pipeline: Pipeline
    simulate_devices: int = 0
    simulate_rate: float = 1.0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    stopping: bool = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            self.pipeline.start()
            if self.simulate_devices:
                self.pipeline.start_simulator(self.simulate_devices, self.simulate_rate)
            watchdog = ServiceWatchdog(
                self.pipeline.stack, self._say, self.pipeline.on_service_restart
            )
            # state.json first: whoever reads "Ctrl-C stops" may run `healthsync status`.
            self._save_state(watchdog)
            self._announce()
            recycler = BrokerRecycler(
                self.pipeline, self._say, lambda parked: self._tend(watchdog, parked)
            )
            self._watch(watchdog, recycler)
        finally:
            self._say("stopping ...")
            self.pipeline.stop()
            self._say("stopped.")
        return 0

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _announce(self) -> None:
        settings, stack = self.pipeline.settings, self.pipeline.stack
        broker_tls = bool(stack.broker and stack.broker.tls)
        redis_tls = bool(stack.redis and stack.redis.tls)
        embedded_kafka = " (embedded Tansu)" if stack.broker else ""
        if broker_tls:
            embedded_kafka = " (embedded Tansu, TLS via HAProxy)"
        embedded_redis = " (embedded, TLS)" if redis_tls else " (embedded)" if stack.redis else ""
        self._say(f"kafka     {settings.kafka.bootstrap}{embedded_kafka}")
        self._say(f"redis     {_without_password(str(settings.redis.url))}{embedded_redis}")
        if stack.broker:
            self._broker_notes()
        ingest = settings.ingest
        if ingest.plain_enabled:
            self._say(f"ingest    tcp://{ingest.host}:{ingest.port}  (plaintext)")
        if ingest.tls_enabled:
            mutual = "mutual TLS" if ingest.require_client_cert else "TLS"
            self._say(
                f"ingest    tls://{ingest.tls_host}:{ingest.tls_port}  "
                f"({mutual}; certificates in {settings.tls.dir})"
            )
        front = self.pipeline.front
        if front is not None:
            self._say(
                f"front     HAProxy, {len(front.replicas)} ingest replicas; "
                f"stats {front.stats_url.removesuffix(';csv')}, /metrics (loopback)"
            )
        self._say(f"api       {self.pipeline.api_url}  (docs at /docs)")
        if broker_tls or redis_tls or settings.api.tls_enabled:
            self._say(f"certs     {settings.tls.dir}  (clients trust ca.crt)")
        key_file = self.pipeline.local_key_file
        if key_file is not None:
            cacert = f"--cacert {settings.tls.dir}/ca.crt " if settings.api.tls_enabled else ""
            self._say(
                f"api key   {key_file} (admin); e.g. curl {cacert}-H "
                f'"Authorization: Bearer $(cat {key_file})" '
                f"{self.pipeline.api_url}/v1/patients"
            )
        if settings.auth.audit_log_file is not None:
            self._say(f"audit     {settings.auth.audit_log_file}")
        if self.simulate_devices:
            self._say(f"devices   {self.simulate_devices} simulated at {self.simulate_rate}/s each")
        self._say(f"logs      {self.pipeline.logs}")
        self._say("Ctrl-C stops everything.")

    def _broker_notes(self) -> None:
        self._say(
            "note      the embedded broker keeps its topics in memory and is not durable: "
            "a broker restart loses readings acknowledged but not yet processed. "
            "For production set kafka.bootstrap to a Kafka cluster."
        )
        limit = self.pipeline.settings.kafka.embedded_max_mb
        if limit:
            self._say(
                f"note      past {limit} MiB the embedded broker's topics are emptied once "
                "every stage has caught up (kafka.embedded_max_mb; ingest answers ERR 503 "
                "for a few seconds meanwhile, and past twice that for as long as the stages "
                "take to catch up, if they fell behind)"
            )

    def _watch(self, watchdog: ServiceWatchdog, recycler: BrokerRecycler) -> None:
        settings = self.pipeline.settings
        redis = connect(settings.redis)
        last = (time.monotonic(), 0, 0)
        while not self.stopping:
            time.sleep(1.0)
            self.pipeline.restart_dead(self._say)
            down = watchdog.check()
            if not down:
                recycler.check()
            self._save_state(watchdog)
            last = self._summary(redis, last, down)
        redis.close()

    def _tend(self, watchdog: ServiceWatchdog, parked: Collection[str]) -> None:
        """The watch loop's round while a broker recycle waits (a catch-up can take
        minutes): restart what died but what the recycle parked, and stop when asked."""
        if self.stopping:
            raise Interrupted("up is stopping")
        self.pipeline.restart_dead(self._say, parked)
        watchdog.check()
        self._save_state(watchdog)

    def _save_state(self, watchdog: ServiceWatchdog) -> None:
        """Tell `healthsync status` which processes are ours (pids change on restarts)."""
        pipeline = self.pipeline
        settings = pipeline.settings
        processes = [
            ProcessEntry(s.name, s.process.pid, "service", watchdog.restarts(s.name))
            for s in pipeline.stack.services()
        ]
        processes += [
            ProcessEntry(c.name, c.process.pid, "stage", c.restarts)
            for c in pipeline.children.values()
            if c.process is not None
        ]
        ca, cert, key = (
            settings.redis.tls_ca_file,
            settings.redis.tls_cert_file,
            settings.redis.tls_key_file,
        )
        state = RunState(
            up_pid=os.getpid(),
            redis_url=str(settings.redis.url),  # with the password: the file is the owner's only
            redis_prefix=settings.redis.prefix,
            redis_ca=str(ca) if ca else None,
            redis_cert=str(cert) if cert else None,
            redis_key=str(key) if key else None,
            processes=processes,
            front_stats_url=pipeline.front.stats_url if pipeline.front else None,
        )
        try:
            state.save(pipeline.run_dir)
        except OSError as exc:
            self._say(f"could not write {pipeline.run_dir}/state.json: {exc}")

    def _summary(
        self, redis: Redis, last: tuple[float, int, int], down: list[str]
    ) -> tuple[float, int, int]:
        """One line of throughput, and what is down; the counters it read."""
        keys = self.pipeline.settings.redis.keys
        restarting = f"  down: {', '.join(down)} (restarting)" if down else ""
        try:
            accepted = int(redis.hget(keys.stats("ingest"), "readings_accepted_total") or 0)
            processed = sum(
                int(redis.hget(key, "readings_processed_total") or 0)
                for key in keys.stats_keys("processor")
            )
            open_alerts = int(redis.hlen(keys.open_alerts))
        except RedisError as exc:
            # Name the dependency, not a bare socket error repeated every second.
            self._say(f"summary unavailable: redis unreachable ({type(exc).__name__}){restarting}")
            return last
        now = time.monotonic()
        elapsed = max(now - last[0], 1e-6)
        in_rate = (accepted - last[1]) / elapsed
        out_rate = (processed - last[2]) / elapsed
        self._say(
            f"ingest {in_rate:7.0f}/s  processed {out_rate:7.0f}/s  "
            f"total {processed}  open alerts {open_alerts}{restarting}"
        )
        return (now, accepted, processed)


def _without_password(url: str) -> str:
    """A Redis URL fit to print: its password is in <run dir>/state.json (owner only)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))
