"""ops/firewall.sh, applied inside a network namespace built for the test.

A server namespace runs a real redis-server and TCP listeners on the Kafka,
ingest and API ports; four host namespaces, each on its own veth link, play a
device, a clinician workstation, an application host and an outside host. The
rules are applied in the server namespace only; the root namespace's iptables
are compared before and after. Needs root (CAP_NET_ADMIN), as CI runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from healthsync.stack import die_with_parent, stop_process

SCRIPT = Path(__file__).resolve().parent.parent / "ops" / "firewall.sh"

INGEST, INGEST_TLS, API, KAFKA, REDIS = 7000, 7443, 8000, 9092, 6379
PORTS = (INGEST, INGEST_TLS, API, KAFKA, REDIS)
HOSTS = {"device": 1, "clinician": 2, "app": 3, "outside": 4}
PROBE_TIMEOUT_S = 1.5

# Listens on the given ports in the server namespace and greets each connection.
LISTENER = """
import socket, sys, selectors
sel = selectors.DefaultSelector()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept()
        conn.sendall(b"hello %d\\n" % key.fileobj.getsockname()[1]); conn.close()
"""

# Connects to each port at once; prints {port: "open" | "refused" | "timeout"}.
# Redis must answer PING, the listeners their greeting: "open" means served.
PROBE = """
import json, socket, sys, concurrent.futures as cf
host, timeout, redis_port = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
def probe(port):
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            if port == redis_port:
                s.sendall(b"PING\\r\\n")
                return "open" if s.recv(64).startswith(b"+PONG") else "bad answer"
            return "open" if s.recv(64) == b"hello %d\\n" % port else "bad answer"
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
ports = [int(p) for p in sys.argv[4:]]
with cf.ThreadPoolExecutor(len(ports)) as pool:
    print(json.dumps(dict(zip(map(str, ports), pool.map(probe, ports)))))
"""


def run(*argv: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=timeout)


def root_rules() -> str:
    # ip6tables may be unusable on a host without IPv6; its (empty) answer still compares.
    return run("iptables", "-S").stdout + run("ip6tables", "-S", check=False).stdout


@dataclass
class Lab:
    """The namespaces, their addresses, and the services in the server namespace."""

    tag: str
    tmp: Path
    namespaces: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"hs{self.tag}srv"

    def ns(self, host: str) -> str:
        return f"hs{self.tag}{host[:3]}"

    @staticmethod
    def client_ip(host: str) -> str:
        return f"10.250.{HOSTS[host]}.2"

    @staticmethod
    def server_ip(host: str) -> str:
        return f"10.250.{HOSTS[host]}.1"

    def build(self) -> None:
        for name in (self.server, *map(self.ns, HOSTS)):
            run("ip", "netns", "add", name)
            self.namespaces.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        for host, index in HOSTS.items():
            inside, outside = f"hs{self.tag}{index}s", f"hs{self.tag}{index}c"
            run(
                *("ip", "link", "add", inside, "netns", self.server, "type", "veth"),
                *("peer", "name", outside, "netns", self.ns(host)),
            )
            for namespace, device, address in (
                (self.server, inside, self.server_ip(host)),
                (self.ns(host), outside, self.client_ip(host)),
            ):
                run("ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", device)
                run("ip", "-n", namespace, "link", "set", device, "up")

    def start_services(self) -> None:
        redis_server = shutil.which("redis-server")
        assert redis_server, "redis-server is not installed (make system-deps)"
        self.spawn(
            redis_server,
            *("--bind", "0.0.0.0", "--port", str(REDIS), "--protected-mode", "no"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.tmp)),
        )
        listener = self.spawn(sys.executable, "-c", LISTENER, *map(str, PORTS[:-1]))
        assert listener.stdout is not None
        assert listener.stdout.readline() == b"ready\n", "the test listener did not start"
        results = self.probe_from_server()
        assert set(results.values()) == {"open"}, f"services did not start: {results}"

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            ["ip", "netns", "exec", self.server, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.processes.append(process)
        return process

    def _probe_argv(self, namespace: str, target: str) -> list[str]:
        return [
            *("ip", "netns", "exec", namespace, sys.executable, "-c", PROBE),
            *(target, str(PROBE_TIMEOUT_S), str(REDIS), *map(str, PORTS)),
        ]

    def probe_from_server(self) -> dict[int, str]:
        out = run(*self._probe_argv(self.server, "127.0.0.1")).stdout
        return {int(port): result for port, result in json.loads(out).items()}

    def reachability(self) -> dict[str, dict[int, str]]:
        """What each host sees on each server port, all hosts probed at once."""
        probes = {
            host: subprocess.Popen(
                self._probe_argv(self.ns(host), self.server_ip(host)),
                stdout=subprocess.PIPE,
                text=True,
            )
            for host in HOSTS
        }
        results = {}
        for host, process in probes.items():
            out, _ = process.communicate(timeout=20)
            assert process.returncode == 0, f"probe from {host} failed"
            results[host] = {int(port): result for port, result in json.loads(out).items()}
        return results

    def firewall(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ops/firewall.sh in the server namespace (never in the root namespace)."""
        config = {
            "DEVICE_NETS": f"{self.client_ip('device')}/32",
            "CLINICIAN_NETS": "10.250.2.0/24",
            "APP_HOSTS": self.client_ip("app"),
            "INGEST_PORTS": f"{INGEST} {INGEST_TLS}",
            "API_PORTS": str(API),
            "KAFKA_PORTS": str(KAFKA),
        }
        env_file = self.tmp / "firewall.env"
        env_file.write_text("".join(f'{key}="{value}"\n' for key, value in config.items()))
        # REDIS_PORTS comes from the environment, the rest from the file: both sources work.
        environment = {"PATH": os.environ["PATH"], "REDIS_PORTS": str(REDIS)} | (env or {})
        return run(
            *("ip", "netns", "exec", self.server, "env", "-i"),
            *(f"{key}={value}" for key, value in environment.items()),
            *("bash", str(SCRIPT), "--env-file", str(env_file), *args),
            check=check,
        )

    def server_rules(self) -> str:
        return run("ip", "netns", "exec", self.server, "iptables", "-S").stdout

    def teardown(self) -> None:
        for process in self.processes:
            stop_process(process, timeout=5)
            if process.stdout is not None:
                process.stdout.close()
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    assert os.geteuid() == 0, "the firewall tests need root to create network namespaces"
    before = root_rules()
    built = Lab(uuid.uuid4().hex[:6], tmp_path_factory.mktemp("firewall"))
    try:
        built.build()
        built.start_services()
        yield built
    finally:
        built.teardown()
    assert root_rules() == before, "the root namespace's iptables rules changed"


@pytest.fixture
def applied(lab: Lab) -> Iterator[Lab]:
    lab.firewall("apply")
    yield lab
    lab.firewall("remove")


OPEN, DROPPED = "open", "timeout"
EXPECTED = {
    "device": {INGEST: OPEN, INGEST_TLS: OPEN, API: DROPPED, KAFKA: DROPPED, REDIS: DROPPED},
    "clinician": {INGEST: DROPPED, INGEST_TLS: DROPPED, API: OPEN, KAFKA: DROPPED, REDIS: DROPPED},
    "app": {INGEST: DROPPED, INGEST_TLS: DROPPED, API: DROPPED, KAFKA: OPEN, REDIS: OPEN},
    "outside": dict.fromkeys(PORTS, DROPPED),
}


def test_without_rules_every_host_reaches_every_service(lab: Lab) -> None:
    assert lab.reachability() == {host: dict.fromkeys(PORTS, OPEN) for host in HOSTS}


def test_rules_let_each_network_reach_only_its_services(applied: Lab) -> None:
    assert applied.reachability() == EXPECTED
    # Loopback keeps everything, so the stages on the server itself still work.
    assert applied.probe_from_server() == dict.fromkeys(PORTS, OPEN)


def test_apply_twice_gives_the_same_rules(applied: Lab) -> None:
    once = applied.server_rules()
    assert once.count("-A INPUT -j HEALTHSYNC-IN") == 1
    applied.firewall("apply")
    assert applied.server_rules() == once
    assert applied.reachability() == EXPECTED


def test_remove_restores_reachability(lab: Lab) -> None:
    original = lab.server_rules()
    lab.firewall("apply")
    assert lab.reachability()["outside"] == dict.fromkeys(PORTS, DROPPED)
    lab.firewall("remove")
    assert lab.server_rules() == original
    assert lab.reachability() == {host: dict.fromkeys(PORTS, OPEN) for host in HOSTS}
    # Removing what is not there is not an error.
    lab.firewall("remove")


def test_status_prints_the_chain_and_says_when_absent(lab: Lab) -> None:
    absent = lab.firewall("status", check=False)
    assert absent.returncode == 3
    assert "HEALTHSYNC-IN not present" in absent.stdout
    lab.firewall("apply")
    try:
        shown = lab.firewall("status")
        assert "10.250.2.0/24" in shown.stdout
        assert f"dpt:{REDIS}" in shown.stdout
    finally:
        lab.firewall("remove")


def test_environment_wins_over_the_env_file(lab: Lab) -> None:
    # The env file lets the clinician network in; the environment narrows it to nobody.
    lab.firewall("apply", env={"CLINICIAN_NETS": ""})
    try:
        assert lab.reachability()["clinician"][API] == DROPPED
    finally:
        lab.firewall("remove")


def test_bad_configuration_is_refused_before_any_rule_changes(lab: Lab) -> None:
    before = lab.server_rules()
    result = lab.firewall("apply", env={"APP_HOSTS": "10.250.3.300"}, check=False)
    assert result.returncode == 64
    assert "APP_HOSTS: '10.250.3.300' is not an IPv4 address" in result.stderr
    result = lab.firewall("apply", env={"REDIS_PORTS": "6379 70000"}, check=False)
    assert result.returncode == 64
    assert "REDIS_PORTS: '70000' is not a port" in result.stderr
    # iptables reads an octet with a leading zero as octal: 10.010.0.0/16 became 10.8.0.0/16,
    # opening the devices' ports to another network (and 08 was a bash error).
    for padded in ("10.010.0.0/16", "10.08.0.0/16"):
        result = lab.firewall("apply", env={"DEVICE_NETS": padded}, check=False)
        assert result.returncode == 64, padded
        assert result.stderr.strip() == (
            f"firewall.sh: DEVICE_NETS: '{padded}' is not an IPv4 address or network"
        )
    assert lab.server_rules() == before


def test_firewall_script_is_shellcheck_clean() -> None:
    result = run("shellcheck", str(SCRIPT), check=False)
    assert result.returncode == 0, result.stdout
