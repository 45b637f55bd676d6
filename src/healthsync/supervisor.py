"""`healthsync up`: the whole pipeline on one machine, each stage its own process.

Starts the embedded broker and Redis (unless external ones are configured),
creates the topics, then runs ingest, processor, API and optionally the device
simulator as supervised children: a child that dies is restarted with backoff.
SIGINT/SIGTERM stops the devices first, then ingest (which answers what it has
in flight), the processor, the API, and finally Redis and the broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

from redis import Redis

from healthsync.config import Settings
from healthsync.kafka import ensure_topics
from healthsync.stack import (
    EmbeddedStack,
    die_with_parent,
    start_broker,
    start_redis,
    stop_process,
    wait_for_port,
)

_MAX_BACKOFF_S = 30.0
# Order matters on shutdown: stop producers of data before its consumers.
_STOP_ORDER = ("simulate", "ingest", "process", "api")


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15.0)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


@dataclass
class Supervisor:
    settings: Settings
    run_dir: Path
    simulate_devices: int = 0
    simulate_rate: float = 1.0
    out: TextIO = field(default_factory=lambda: sys.stdout)
    stack: EmbeddedStack = field(default_factory=EmbeddedStack)
    children: dict[str, Child] = field(default_factory=dict)
    stopping: bool = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        try:
            self._start()
            self._watch()
        finally:
            self._stop()
        return 0

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _start(self) -> None:
        logs = self.run_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        settings = self.settings
        if settings.kafka.bootstrap is None:
            self.stack.broker = start_broker(log_dir=logs)
            settings.kafka.bootstrap = self.stack.bootstrap
        if settings.redis.url is None:
            self.stack.redis = start_redis(log_dir=logs)
            settings.redis.url = self.stack.redis_url
        ensure_topics(settings.kafka)
        env = dict(os.environ)
        env.update(
            {
                "HEALTHSYNC_KAFKA_BOOTSTRAP": str(settings.kafka.bootstrap),
                "HEALTHSYNC_REDIS_URL": str(settings.redis.url),
                "HEALTHSYNC_INGEST_HOST": settings.ingest.host,
                "HEALTHSYNC_INGEST_PORT": str(settings.ingest.port),
                "HEALTHSYNC_API_HOST": settings.api.host,
                "HEALTHSYNC_API_PORT": str(settings.api.port),
            }
        )
        self._env = env
        base = [sys.executable, "-m", "healthsync"]
        for name in ("ingest", "process", "api"):
            self.children[name] = Child(name, [*base, name], logs / f"{name}.log")
        for child in self.children.values():
            child.start(env)
        wait_for_port(settings.ingest.host, settings.ingest.port, 20, self._proc("ingest"))
        wait_for_port(settings.api.host, settings.api.port, 20, self._proc("api"))
        if self.simulate_devices:
            sim = Child(
                "simulate",
                [
                    *base,
                    "simulate",
                    "--devices",
                    str(self.simulate_devices),
                    "--rate",
                    str(self.simulate_rate),
                    "--host",
                    settings.ingest.host,
                    "--port",
                    str(settings.ingest.port),
                ],
                logs / "simulate.log",
            )
            self.children["simulate"] = sim
            sim.start(env)
        self._say(
            f"kafka     {settings.kafka.bootstrap}"
            + (" (embedded Tansu)" if self.stack.broker else "")
        )
        self._say(f"redis     {settings.redis.url}" + (" (embedded)" if self.stack.redis else ""))
        self._say(f"ingest    tcp://{settings.ingest.host}:{settings.ingest.port}")
        self._say(f"api       http://{settings.api.host}:{settings.api.port}  (docs at /docs)")
        if self.simulate_devices:
            self._say(f"devices   {self.simulate_devices} simulated at {self.simulate_rate}/s each")
        self._say(f"logs      {logs}")
        self._say("Ctrl-C stops everything.")

    def _proc(self, name: str) -> subprocess.Popen[bytes]:
        process = self.children[name].process
        assert process is not None
        return process

    def _watch(self) -> None:
        redis = Redis.from_url(str(self.settings.redis.url))
        keys = self.settings.redis.keys
        last = (time.monotonic(), 0, 0)
        while not self.stopping:
            time.sleep(1.0)
            self._restart_dead()
            try:
                accepted = int(redis.hget(keys.stats("ingest"), "readings_accepted_total") or 0)
                processed = int(
                    redis.hget(keys.stats("processor"), "readings_processed_total") or 0
                )
                open_alerts = int(redis.hlen(keys.open_alerts))
            except Exception as exc:  # noqa: BLE001 - the summary is informational
                self._say(f"(summary unavailable: {exc})")
                continue
            now = time.monotonic()
            elapsed = max(now - last[0], 1e-6)
            in_rate = (accepted - last[1]) / elapsed
            out_rate = (processed - last[2]) / elapsed
            self._say(
                f"ingest {in_rate:7.0f}/s  processed {out_rate:7.0f}/s  "
                f"total {processed}  open alerts {open_alerts}"
            )
            last = (now, accepted, processed)
        redis.close()

    def _restart_dead(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.process is None or child.process.poll() is None or now < child.next_start:
                continue
            code = child.process.returncode
            child.stop()
            child.restarts += 1
            backoff = min(2.0**child.restarts, _MAX_BACKOFF_S)
            child.next_start = now + backoff
            self._say(
                f"{child.name} exited with code {code}; restarting (restart {child.restarts})"
            )
            child.start(self._env)

    def _stop(self) -> None:
        self._say("stopping ...")
        for name in _STOP_ORDER:
            child = self.children.get(name)
            if child is not None:
                child.stop()
        self.stack.stop()
        self._say("stopped.")
