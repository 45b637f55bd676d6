"""ops/monitor scripts against a live `up`: their figures match what the test did."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from healthsync.config import ProcessorSettings
from tests.live_stack import live_stack

MONITOR = Path(__file__).resolve().parent.parent / "ops" / "monitor"


def run(script: str, *args: str, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(MONITOR / script), *args], cwd=cwd, capture_output=True, timeout=60, check=True
    )
    return result.stdout.decode()


def section(text: str, title: str) -> list[list[str]]:
    """The rows of one `== title` section, split into fields."""
    rows: list[list[str]] = []
    inside = False
    for line in text.splitlines():
        if line.startswith("== "):
            inside = line.startswith(f"== {title}")
            continue
        if inside and line.strip():
            rows.append(line.split())
    return rows


@pytest.mark.parametrize("script", ["conns.sh", "top.sh", "traffic.sh"])
def test_scripts_are_shellcheck_clean_and_explain_themselves(script: str) -> None:
    subprocess.run(["shellcheck", str(MONITOR / script)], check=True, timeout=60)
    assert run(script, "--help").startswith(f"Usage: {script}")
    bad = subprocess.run(
        [str(MONITOR / script), "--bogus"], capture_output=True, timeout=60, check=False
    )
    assert bad.returncode == 64 and b"unknown argument" in bad.stderr


@pytest.mark.timeout(300)
def test_conns_and_top_report_what_the_live_stack_is_doing(tmp_path: Path) -> None:
    with live_stack(tmp_path) as stack:
        devices = [stack.device() for _ in range(5)]
        try:
            for device in devices:
                assert device.send(b"device_id=d-2 patient_id=P-2 hr=71").startswith("OK ")
            out = run("conns.sh", "--ports", f"ingest:{stack.ingest_port},api:{stack.api_port}")
        finally:
            for device in devices:
                device.close()
        port = str(stack.ingest_port)
        states = {(r[0], r[2]): int(r[3]) for r in section(out, "connections by port and state")}
        assert states[(port, "ESTAB")] == 5, out
        assert states[(port, "LISTEN")] == 1, out
        remotes = section(out, "connections by port and remote host")
        assert [port, "ingest", "127.0.0.1", "5"] in remotes, out
        assert "listen queue overflows" in out and "segments retransmitted" in out

        table = run("top.sh", "--run-dir", "run", cwd=stack.directory)
        rows = {r[0]: r[1:] for r in (line.split() for line in table.splitlines()[1:])}
        # `up`'s processors (two on two cores) add up to one stage.
        processors = ProcessorSettings().processes
        expected = {"up": 1, "process": processors, "api": 1, "redis": 1, "broker": 1}
        for stage, count in expected.items():
            assert rows[stage][0] == str(count), (stage, table)
            assert float(rows[stage][2]) > 0, (stage, table)
        assert rows["ingest"][0] == "2", table  # up's default: two replicas behind HAProxy
        assert float(rows["ingest"][2]) > 0, table
        assert rows["haproxy"][0] == "2", table  # the broker's TLS front and the ingest front
        assert "other" not in rows, table


def capturing(seconds: int, tls_ports: list[int], ports: str) -> subprocess.Popen[bytes]:
    """traffic.sh capturing for `seconds`, once tcpdump has started."""
    capture = subprocess.Popen(
        [
            str(MONITOR / "traffic.sh"),
            *("--seconds", str(seconds), "--tls-ports", " ".join(map(str, tls_ports))),
            *("--ports", ports),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(2)  # tcpdump is capturing by then
    return capture


# The capture counts every connection to the stack's ports on loopback, so the test runs
# alone: another test's client that reaches a port it once had (now the stack's) would
# be counted as a device.
@pytest.mark.alone
@pytest.mark.timeout(300)
def test_traffic_counts_connections_and_names_plaintext_on_the_tls_port(tmp_path: Path) -> None:
    with live_stack(tmp_path) as stack:
        plain, tls = stack.ingest_port, stack.tls_port
        capture = capturing(6, [tls], f"ingest:{plain},ingest-tls:{tls}")
        try:
            device = stack.device()
            for seq in range(3):
                line = f"device_id=d-3 patient_id=P-3 seq={seq} hr=72".encode()
                assert device.send(line).startswith("OK ")
            device.close()
            # A real TLS client: its first bytes are a handshake record.
            context = ssl.create_default_context(cafile=str(stack.run_dir / "certs" / "ca.crt"))
            # Without a client certificate mutual TLS turns it away; only its bytes matter here.
            with (
                socket.create_connection(("127.0.0.1", tls), timeout=5) as raw,
                contextlib.suppress(OSError),
                context.wrap_socket(raw, server_hostname="localhost") as wrapped,
            ):
                wrapped.recv(1)
            # A device that forgot TLS.
            with socket.create_connection(("127.0.0.1", tls), timeout=5) as raw:
                raw.sendall(b"plaintext-probe hello\n")
                time.sleep(0.5)
            out, err = capture.communicate(timeout=60)
        finally:
            if capture.poll() is None:
                capture.terminate()  # the script removes its capture file on SIGTERM
                capture.communicate(timeout=30)
    text = out.decode()
    assert capture.returncode == 1, (text, err)
    rows = {r[0]: r for r in section(text, "traffic per port")[1:]}
    assert rows[str(plain)][4] == "1", text  # one device connection
    assert int(rows[str(plain)][2]) >= 6, text  # 3 lines and 3 answers at least
    assert rows[str(tls)][4] == "2", text  # the TLS client and the plaintext one
    named = section(text, "plaintext on TLS ports")
    assert len(named) == 1, text
    assert " ".join(named[0]).endswith('"plaintext-probe hello."'), text


def test_top_reads_a_process_tree_of_more_than_twenty(tmp_path: Path) -> None:
    """`top -p` takes at most 20 pids, and `up` with more replicas or processors runs more:
    top.sh failed with "pid limit (20) exceeded" on a tree of 26."""
    tree = subprocess.Popen(["bash", "-c", "for i in $(seq 25); do sleep 60 & done; wait"])
    try:
        time.sleep(0.5)
        table = run("top.sh", "--pid", str(tree.pid), "--delay", "0.2", cwd=tmp_path)
    finally:
        subprocess.run(["pkill", "-P", str(tree.pid)], check=False)
        tree.wait(timeout=10)
    rows = {row[0]: row for row in (line.split() for line in table.splitlines()[1:])}
    assert rows["other"][1] == "26"


# Alone, as the test above: the capture counts whatever reaches the port on loopback.
@pytest.mark.alone
@pytest.mark.timeout(120)
def test_traffic_reads_ipv6_and_names_plaintext_there_too() -> None:
    """The parser read every packet as IPv4 while the capture took IPv6 too: a plaintext
    line to a TLS port over ::1 showed 0 packets and "none", and the script exited 0."""
    server = socket.create_server(("::1", 0), family=socket.AF_INET6)
    port = server.getsockname()[1]
    capture = capturing(4, [port], f"tls6:{port}")
    try:
        with socket.create_connection(("::1", port)) as client:
            accepted, _ = server.accept()
            client.sendall(b"device_id=d-6 patient_id=P-6 hr=70\n")
            accepted.recv(100)
            accepted.close()
        out, err = capture.communicate(timeout=60)
    finally:
        capture.kill()
        server.close()
    text = out.decode()
    assert capture.returncode == 1, (text, err.decode())
    [row] = [r for r in section(text, "traffic per port") if r[0] == str(port)]
    assert int(row[2]) > 0 and row[4] == "1", text
    assert f"port {port} from client port" in text and '"device_id=d-6' in text, text
