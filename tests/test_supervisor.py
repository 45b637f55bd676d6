"""`healthsync up`: everything starts, a dead stage comes back, Ctrl-C leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from healthsync.children import Child
from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.stack import free_port
from healthsync.supervisor import Pipeline
from tests.conftest import wait_for
from tests.live_stack import alive, descendants


def is_ingest(pid: int) -> bool:
    try:
        return b"healthsync\0ingest" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_up_runs_the_pipeline_and_stops_cleanly(tmp_path: Path) -> None:
    ingest_port, tls_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    env |= {
        "HEALTHSYNC_INGEST_PORT": str(ingest_port),
        "HEALTHSYNC_INGEST_TLS_PORT": str(tls_port),
        "HEALTHSYNC_API_PORT": str(api_port),
        "HEALTHSYNC_ARCHIVE_ROLL_S": "1",
    }
    up = subprocess.Popen(
        [sys.executable, "-m", "healthsync", "up", "--simulate", "3", "--rate", "5"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    # `up` makes its PKI in run/certs; the API is HTTPS, Kafka and Redis are TLS.
    ca = tmp_path / "run" / "certs" / "ca.crt"
    wait_for(ca.exists, timeout=30, what="the local CA")
    try:
        api = httpx.Client(
            base_url=f"https://127.0.0.1:{api_port}",
            verify=ssl.create_default_context(cafile=str(ca)),
            timeout=5,
        )
        # With no authentication configured, `up` makes an admin key in its run directory.
        key_file = tmp_path / "run" / "api-key"
        wait_for(key_file.exists, timeout=60, what="the local API key")
        assert key_file.stat().st_mode & 0o777 == 0o600
        bearer = {"Authorization": f"Bearer {key_file.read_text().strip()}"}

        def three_patients() -> list[object] | None:
            try:
                response = api.get("/v1/patients", headers=bearer)
                patients: list[object] = response.json()["patients"]
            except httpx.HTTPError:
                return None
            return patients if len(patients) == 3 else None

        wait_for(three_patients, timeout=90, what="readings from 3 simulated devices")
        archived = tmp_path / "run" / "archive" / "identified" / "readings"
        wait_for(lambda: list(archived.rglob("*.parquet")), 60, "readings in run/archive")
        assert api.get("/v1/patients").status_code == 401, "the API never runs open"
        audit = (tmp_path / "run" / "audit.jsonl").read_text().splitlines()
        assert json.loads(audit[-1])["actor"] == "apikey:local-admin"
        processes = descendants(up.pid)
        assert len(processes) >= 7, "broker, haproxy, redis, ingest, processor, api, simulator"

        # A stage that dies is restarted.
        # An ingest replica (`python -m healthsync ingest`), not HAProxy's ingest front,
        # whose command line names its configuration file, ingest-front.cfg.
        ingest_pid = next(p for p in processes if is_ingest(p))
        os.kill(ingest_pid, signal.SIGKILL)
        wait_for(
            # A new process: the other replica, alive all along, is no restart.
            lambda: any(is_ingest(p) for p in descendants(up.pid) if p not in processes),
            timeout=30,
            what="ingest to be restarted",
        )
        processes = descendants(up.pid)

        up.send_signal(signal.SIGINT)
        out, _ = up.communicate(timeout=60)
        api.close()
    finally:
        if up.poll() is None:
            up.kill()
    text = out.decode()
    assert up.returncode == 0, text
    assert "ingest    tcp://127.0.0.1:" in text
    assert "front     HAProxy, 2 ingest replicas; stats http://127.0.0.1:" in text
    assert "(embedded Tansu, TLS via HAProxy)" in text and "redis     rediss://" in text
    assert f"api       https://127.0.0.1:{api_port}" in text
    # TLS is on by default, with a PKI made in the run dir on first start.
    certs = tmp_path / "run" / "certs"
    assert f"ingest    tls://127.0.0.1:{tls_port}  (mutual TLS; certificates in {certs})" in text
    assert (certs / "ca.crt").is_file() and (certs / "ingest.key").stat().st_mode & 0o077 == 0
    assert "api key   run/api-key (admin)" in text
    assert "processed" in text and "stopped." in text
    # The killed ingest was one of the replicas behind HAProxy.
    assert re.search(r"ingest-\d exited with code -9; restart 1", text), text
    assert not [p for p in processes if alive(p)], "a child outlived healthsync up"


def up_refused(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[bytes]:
    """`healthsync up` in `tmp_path` with these variables, expected to refuse to start."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "healthsync", "up"],
        cwd=tmp_path,
        env=clean | env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_missing_redis_binary_is_one_clear_line(tmp_path: Path) -> None:
    # Nothing to find on PATH: redis-server is "not installed".
    result = up_refused(tmp_path, PATH=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.decode().strip() == (
        "healthsync: redis-server not found on PATH; install it with: "
        "sudo apt-get install redis-server"
    )


def test_the_plaintext_port_is_refused_beyond_this_machine_behind_haproxy_too(
    tmp_path: Path,
) -> None:
    """Ingest refuses a plaintext listener off loopback unless plain_allow_remote says so;
    behind HAProxy (two replicas, the default) the replicas listen on loopback and HAProxy
    bound the public plaintext port wherever ingest.host said, unchecked."""
    result = up_refused(tmp_path, HEALTHSYNC_INGEST_HOST="0.0.0.0", HEALTHSYNC_INGEST_REPLICAS="2")
    assert result.returncode == 2, result.stderr.decode()[-2000:]
    assert result.stderr.decode().strip().splitlines()[-1] == (
        "healthsync: the plaintext ingest port would listen on 0.0.0.0, beyond this machine; "
        "use the TLS port, or set HEALTHSYNC_INGEST_PLAIN_ALLOW_REMOTE=true"
    )


def test_a_second_up_on_the_same_run_directory_is_refused(tmp_path: Path) -> None:
    """Nothing stopped it: a second `up` on the run directory started its own Redis on the
    first one's data directory, rewrote the Redis password and HAProxy's files, and the
    first run's restarted services then read the second's."""
    first = Pipeline(Settings(), tmp_path / "run")
    first.start(stages=())
    try:
        with pytest.raises(ConfigError, match="in use by another `healthsync up`"):
            Pipeline(Settings(), tmp_path / "run").start(stages=())
    finally:
        first.stop()
    again = Pipeline(Settings(), tmp_path / "run")  # free once the first stopped
    again.start(stages=())
    again.stop()


# A stand-in for ingest's start-up, which cannot be slowed down from outside: a process
# that binds the plaintext port at once and the TLS port a while later, as a niced
# ingest on a busy machine may.
_BINDS_ONE_THEN_THE_OTHER = """
import socket, sys, time
first = socket.create_server(("127.0.0.1", int(sys.argv[1])))
time.sleep(float(sys.argv[3]))
second = socket.create_server(("127.0.0.1", int(sys.argv[2])))
time.sleep(60)
"""


def test_ingest_counts_as_started_only_once_its_tls_port_listens_too(tmp_path: Path) -> None:
    plain, tls = free_port(), free_port()
    settings = Settings(
        ingest={"plain_enabled": True, "port": plain, "tls_enabled": True, "tls_port": tls}
    )
    pipeline = Pipeline(settings, tmp_path)
    ingest = subprocess.Popen(
        [sys.executable, "-c", _BINDS_ONE_THEN_THE_OTHER, str(plain), str(tls), "1.5"]
    )
    pipeline.children["ingest"] = Child("ingest", [], tmp_path / "ingest.log", process=ingest)
    try:
        pipeline.wait_listening(("ingest",))
        # What a device connecting right after start-up finds: the TLS port open.
        socket.create_connection(("127.0.0.1", tls), timeout=2).close()
    finally:
        ingest.kill()
        ingest.wait()
