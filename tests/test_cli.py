"""The command line a service manager or an operator uses."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from healthsync.config import Settings
from healthsync.security.certs import issue_device
from healthsync.security.crl import revoked_serials
from healthsync.stack import free_port


def run_cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    env.update(settings.to_env())
    return subprocess.run(
        [sys.executable, "-m", "healthsync", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_passes_when_redis_and_kafka_answer(settings: Settings) -> None:
    result = run_cli(settings, "check")
    assert (result.returncode, result.stdout.strip()) == (0, "ok")


def test_check_fails_and_says_what_is_down(settings: Settings) -> None:
    settings.kafka.bootstrap = f"127.0.0.1:{free_port()}"
    result = run_cli(settings, "check")
    assert result.returncode == 1
    assert result.stderr.startswith("kafka: Kafka at 127.0.0.1:")


def test_simulate_without_a_server_fails_with_a_clear_error(settings: Settings) -> None:
    result = run_cli(settings, "simulate", "--devices", "1", "--count", "1", "--quiet")
    assert result.returncode != 0
    assert "could not connect" in result.stderr


def test_certs_init_device_revoke(settings: Settings, tmp_path: Path) -> None:
    settings.tls.dir = tmp_path / "pki"
    init = run_cli(settings, "certs", "init", "--host", "ingest.ward3.example")
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "pki" / "ingest.crt").is_file()

    again = run_cli(settings, "certs", "init")
    assert again.returncode == 2
    assert "already exist (use --force to replace)" in again.stderr

    device = run_cli(settings, "certs", "device", "mon-0001", "--days", "30")
    assert device.returncode == 0, device.stderr
    cert = tmp_path / "pki" / "devices" / "mon-0001.crt"
    # The key is written apart from the CA's directory.
    key = tmp_path / "pki-device-keys" / "mon-0001.key"
    assert device.stdout.split() == [str(cert), str(key)]

    revoke = run_cli(settings, "certs", "revoke", "mon-0001")
    assert revoke.returncode == 0, revoke.stderr
    serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
    assert serial in revoked_serials(tmp_path / "pki")

    missing = run_cli(settings, "certs", "--dir", str(tmp_path / "none"), "device", "mon-2")
    assert missing.returncode == 2
    assert "run `healthsync certs init` first" in missing.stderr


def test_simulate_over_mutual_tls(start_ingest: Callable[..., Settings]) -> None:
    settings = start_ingest()
    # The simulator's first device is sim-0001: its certificate lets it send.
    cert, key = issue_device(settings.tls.dir, "sim-0001")
    result = run_cli(
        settings,
        *("simulate", "--tls", "--cert", str(cert), "--key", str(key)),
        *("--devices", "1", "--count", "3", "--rate", "20", "--quiet"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sent 3 readings" in result.stdout and "3 OK, 0 ERR" in result.stdout, result.stdout


def test_certs_device_signs_a_devices_own_csr(settings: Settings, tmp_path: Path) -> None:
    settings.tls.dir = tmp_path / "pki"
    assert run_cli(settings, "certs", "init").returncode == 0
    key = tmp_path / "device.key"
    csr = tmp_path / "device.csr"
    made = subprocess.run(
        [
            *("openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=mon-csr"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    issued = run_cli(settings, "certs", "device", "mon-csr", "--csr", str(csr))
    assert issued.returncode == 0, issued.stderr
    assert issued.stdout.split() == [str(tmp_path / "pki" / "devices" / "mon-csr.crt")]
    assert not (tmp_path / "pki-device-keys").exists(), "no key made on the CA's side"
