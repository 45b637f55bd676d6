"""The ingest front of `healthsync up`: HAProxy on the public ingest ports, replicas behind it.

HAProxy runs in TCP mode and does not terminate TLS: the device's TLS session
(and its client certificate) reaches an ingest replica untouched, so mutual
TLS and the certificate-to-device check stay in ingest. Each connection to a
replica starts with a PROXY protocol v2 header carrying the device's address
(`send-proxy-v2`); the replicas listen on private loopback ports and require
that header (`ingest.proxy_protocol`), so no device can claim an address.

HAProxy checks each replica's `GET /readyz` on its own loopback port (200
while it can reach Kafka), balances by least connections, caps connections
per replica at `ingest.max_connections` (more wait in HAProxy's queue), and
serves its stats page and Prometheus endpoint on loopback only. On stop it is
told to stop accepting first (SIGUSR1, a soft stop); the replicas then answer
what is in flight and close, and HAProxy exits once its sessions are done.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from healthsync.config import IngestSettings
from healthsync.errors import ConfigError, HealthSyncError, MissingBinaryError
from healthsync.stack import LOCALHOST, Launch, Service, free_port, spawn

NAME = "ingest-front"
# How long the graceful drain on stop may take before HAProxy closes what is left.
DRAIN_S = 15
_CHECK_INTERVAL_MS = 1000


@dataclass(frozen=True)
class Replica:
    """One ingest process behind the front: its name and private loopback ports."""

    name: str
    port: int
    tls_port: int
    check_port: int

    def env(self) -> dict[str, str]:
        """What makes `healthsync ingest` this replica (on top of the stages' settings)."""
        return {
            "HEALTHSYNC_INGEST_HOST": LOCALHOST,
            "HEALTHSYNC_INGEST_PORT": str(self.port),
            "HEALTHSYNC_INGEST_TLS_HOST": LOCALHOST,
            "HEALTHSYNC_INGEST_TLS_PORT": str(self.tls_port),
            "HEALTHSYNC_INGEST_CHECK_PORT": str(self.check_port),
            "HEALTHSYNC_INGEST_PROXY_PROTOCOL": "true",
            # Plaintext on a private loopback port, reached through the front only.
            "HEALTHSYNC_INGEST_PLAIN_ALLOW_REMOTE": "false",
            "HEALTHSYNC_INGEST_INSTANCE": self.name,
        }


def plan_replicas(count: int) -> list[Replica]:
    return [
        Replica(f"ingest-{n}", free_port(), free_port(), free_port()) for n in range(1, count + 1)
    ]


def front_config(ingest: IngestSettings, replicas: list[Replica], stats_port: int) -> str:
    """HAProxy's configuration: a TCP frontend per public ingest port, one backend each."""
    per_replica = ingest.max_connections
    total = per_replica * len(replicas)
    # Devices stay connected and may be quiet for a while: ingest's idle timeout decides.
    idle_s = int(ingest.idle_timeout_s) + 60
    # One thread, not HAProxy's default of one per core: it only passes short lines on,
    # and on a machine shared with every stage a second thread costs wakeups. At 10,000
    # readings/s paced it took 10-11% of a core against 11-13% with two (bench/pipeline.py
    # --soak 45 and 60 --soak-rate 10000, four alternated pairs, 2026-12-07).
    sections = [
        f"""global
    maxconn {2 * total + 100}
    nbthread 1
    hard-stop-after {DRAIN_S}s

defaults
    mode tcp
    timeout connect 2s
    timeout queue 10s
    timeout client {idle_s}s
    timeout server {idle_s}s
    timeout check 2s
    retries 2
    option redispatch
"""
    ]
    listeners = []
    if ingest.plain_enabled:
        refusal = ingest.plain_refusal()
        if refusal is not None:
            raise ConfigError(refusal)
        listeners.append(("plain", ingest.host, ingest.port))
    if ingest.tls_enabled:
        listeners.append(("tls", ingest.tls_host, ingest.tls_port))
    # A replica that fails two checks gets no new devices and its sessions are cut, so
    # its devices reconnect to another; two passing checks take it back.
    server_options = (
        f"inter {_CHECK_INTERVAL_MS} fall 2 rise 2 maxconn {per_replica} "
        "send-proxy-v2 on-marked-down shutdown-sessions"
    )
    for kind, host, port in listeners:
        servers = "\n".join(
            f"    server {r.name} {LOCALHOST}:{r.port if kind == 'plain' else r.tls_port} "
            f"check port {r.check_port}"
            for r in replicas
        )
        sections.append(
            f"""frontend ingest_{kind}
    bind {host}:{port}
    maxconn {total}
    default_backend ingest_{kind}

backend ingest_{kind}
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server {server_options}
{servers}
"""
        )
    sections.append(
        f"""listen stats
    mode http
    bind {LOCALHOST}:{stats_port}
    timeout client 10s
    timeout server 10s
    stats enable
    stats uri /stats
    http-request use-service prometheus-exporter if {{ path /metrics }}
"""
    )
    return "\n".join(sections)


@dataclass
class IngestFront:
    """The replicas' plan and the HAProxy in front of them."""

    replicas: list[Replica]
    stats_port: int
    service: Service | None = None

    @property
    def stats_url(self) -> str:
        return f"http://{LOCALHOST}:{self.stats_port}/stats;csv"

    def start(self, ingest: IngestSettings, run_dir: Path, log_dir: Path) -> Service:
        """Write the configuration, check it, start HAProxy; returns once it listens."""
        binary = shutil.which("haproxy")
        if binary is None:
            raise MissingBinaryError("haproxy", "sudo apt-get install haproxy")
        config = run_dir / f"{NAME}.cfg"
        config.write_text(front_config(ingest, self.replicas, self.stats_port), encoding="utf-8")
        check = subprocess.run(
            [binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise HealthSyncError(f"{NAME}: haproxy refused {config}: {check.stderr.strip()}")
        address = (ingest.host, ingest.port) if ingest.plain_enabled else None
        address = address or (ingest.tls_host, ingest.tls_port)
        # -db: in the foreground, so it is our child and dies with us.
        self.service = spawn(NAME, [binary, "-db", "-f", str(config)], address, Launch(log_dir))
        return self.service

    def stop_accepting(self) -> None:
        """Soft stop: close the public ports, keep serving the connections already open."""
        if self.service is not None and self.service.alive:
            self.service.process.send_signal(signal.SIGUSR1)

    def wait_stopped(self) -> None:
        """After the replicas drained: HAProxy exits once its last session ended."""
        if self.service is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.service.process.wait(DRAIN_S + 2)  # hard-stop-after ends it before
        self.service.stop()


def new_front(ingest: IngestSettings) -> IngestFront:
    stats_port = ingest.front_stats_port or free_port()
    return IngestFront(plan_replicas(ingest.replicas), stats_port)
