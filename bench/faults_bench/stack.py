"""The pipeline under test: `healthsync up` in a temporary directory.

:class:`Up` starts `healthsync up` itself or, given a network namespace,
netns_up.py (`up`'s supervisor with the processor in that namespace), finds
its processes, and gives the bench the clients it reads the results with:
Redis (from `up`'s state.json, with the client certificate `up` made), the
broker's consumer-group offsets, and the archive.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from redis import Redis

from healthsync.config import Settings
from healthsync.runstate import RunState
from healthsync.stack import free_port

_LAUNCHER = Path(__file__).resolve().parent / "netns_up.py"


class Up:
    def __init__(self, directory: Path, roll_s: float, namespace: str | None = None) -> None:
        self.directory = directory
        self.run_dir = directory / "run"
        self.ingest_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
        env |= {
            "HEALTHSYNC_INGEST_PORT": str(self.ingest_port),
            "HEALTHSYNC_INGEST_TLS_PORT": str(free_port()),
            "HEALTHSYNC_API_PORT": str(free_port()),
            "HEALTHSYNC_ARCHIVE_ROLL_S": str(roll_s),
        }
        if namespace is None:
            argv = [sys.executable, "-m", "healthsync", "up", "--run-dir", str(self.run_dir)]
        else:
            argv = [sys.executable, str(_LAUNCHER), namespace, str(self.run_dir)]
        self.log = (directory / "up.out").open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=directory,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return (self.directory / "up.out").read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while "Ctrl-C stops" not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the pipeline did not start:\n{self.output()}")
            time.sleep(0.2)

    def settings(self) -> Settings:
        """What the bench needs of the stages' settings: keyring, archive, Redis, broker."""
        state = RunState.load(self.run_dir)
        bootstrap = re.search(r"^kafka\s+(\S+)", self.output(), re.M)
        if bootstrap is None:
            raise SystemExit("no broker address in the pipeline's output")
        return Settings(
            crypto={"keyring_file": self.run_dir / "keyring.json"},
            archive={"url": f"file://{self.run_dir / 'archive'}"},
            redis={
                "url": state.redis_url,
                "tls_ca_file": state.redis_ca,
                "tls_cert_file": state.redis_cert,
                "tls_key_file": state.redis_key,
            },
            kafka={
                "bootstrap": bootstrap.group(1),
                "client": {
                    "security.protocol": "SSL",
                    "ssl.ca.location": str(self.run_dir / "certs" / "ca.crt"),
                },
            },
        )

    def redis(self, settings: Settings) -> Redis:
        return Redis.from_url(str(settings.redis.url), **settings.redis.client_options())

    def pid(self, pattern: str) -> int:
        regex = re.compile(pattern)
        for pid in _descendants(self.process.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if regex.search(cmd):
                return pid
        raise SystemExit(f"no process matches {pattern}")

    def restarts(self) -> list[str]:
        return [ln for ln in self.output().splitlines() if "exited with code" in ln]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: list[int] = []
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found.extend(sorted(frontier))
    return found


class GroupLag:
    """How far a consumer group's committed offsets are behind the vitals topic's end.

    The bench's consumer takes the group's name but never subscribes, so it
    does not join the group; it only asks the coordinator for the offsets.
    """

    def __init__(self, settings: Settings, group: str) -> None:
        kafka = settings.kafka
        self.wanted = [TopicPartition(kafka.vitals_topic, p) for p in range(kafka.partitions)]
        self.consumer = Consumer(
            {"bootstrap.servers": kafka.bootstrap, "group.id": group} | kafka.client
        )

    def lag(self) -> int | None:
        """Messages the group has not committed; None while the broker does not answer."""
        try:
            total = 0
            for tp in self.consumer.committed(self.wanted, timeout=2.0):
                low, high = self.consumer.get_watermark_offsets(tp, timeout=2.0)
                total += high - (tp.offset if tp.offset >= 0 else low)
        except KafkaException:
            return None
        return total

    def close(self) -> None:
        self.consumer.close()
