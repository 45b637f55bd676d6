"""devices/monitor.sh with the real nc against a stand-in ingest server, and over TLS
(ncat, openssl s_client) against the real one."""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from healthsync.config import Settings
from healthsync.domain.readings import VITALS, Reading
from healthsync.security.certs import issue_device
from healthsync.wire import WireError, ok_reply, parse_line

SCRIPT = Path(__file__).resolve().parent.parent / "devices" / "monitor.sh"


Answer = Callable[[bytes], bytes | None]


def answer_like_ingest(line: bytes) -> bytes:
    try:
        return ok_reply(parse_line(line, time.time()).reading_id)
    except WireError as exc:
        return exc.reply()


class StubServer(socketserver.ThreadingTCPServer):
    """Reads lines until the client half-closes, answers each, then closes, as ingest does."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, answer: Answer, *, hold_open: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        # Keep a connection open after the client's half-close, like a server
        # that hangs, until the test ends.
        self.hold_open = hold_open
        self.released = threading.Event()
        self.lines: list[bytes] = []
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def readings(self) -> list[Reading]:
        with self.lock:
            return [parse_line(line, time.time()) for line in self.lines]


class _Handler(socketserver.StreamRequestHandler):
    server: StubServer

    def handle(self) -> None:
        for line in self.rfile:
            with self.server.lock:
                self.server.lines.append(line)
            reply = self.server.answer(line)
            if reply is not None:
                self.wfile.write(reply)
        if self.server.hold_open:
            self.server.released.wait(30)


@pytest.fixture
def serve() -> Iterator[Callable[..., StubServer]]:
    servers: list[tuple[StubServer, threading.Thread]] = []

    def start(answer: Answer, *, hold_open: bool = False) -> StubServer:
        server = StubServer(answer, hold_open=hold_open)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.released.set()
        server.shutdown()
        thread.join()
        server.server_close()


def monitor(
    *args: str, state: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"],
        "HOME": str(state),
        **(env or {}),
    }
    return subprocess.run(
        [str(SCRIPT), "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_three_readings_are_sent_and_acknowledged(
    serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    server = serve(answer_like_ingest)
    result = monitor(
        "--device",
        "mon-0001",
        "--patient",
        "P-1001",
        "--port",
        str(server.port),
        "--count",
        "3",
        "--interval",
        "0.1",
        state=tmp_path,
    )
    assert result.returncode == 0, result.stderr

    readings = server.readings()
    assert len(readings) == 3
    assert {(r.device_id, r.patient_id) for r in readings} == {("mon-0001", "P-1001")}
    seqs = [r.seq for r in readings]
    assert seqs[0] is not None and seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]
    for reading in readings:
        assert set(reading.vitals) == set(VITALS)
        assert reading.on_oxygen is False and reading.consciousness == "A"
    # Sent in the literal style of a shell device: a comma and a percent sign.
    assert all(b", " in line and b"%" in line for line in server.lines)

    printed = result.stdout.splitlines()
    assert len(printed) == 3
    for text, reading in zip(printed, readings, strict=True):
        assert text.endswith(f" mon-0001 seq={reading.seq} OK {reading.reading_id}"), text


def test_host_and_port_come_from_the_environment(
    serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    server = serve(answer_like_ingest)
    result = monitor(
        "--device",
        "mon-0002",
        "--patient",
        "P-1002",
        "--count",
        "1",
        state=tmp_path,
        env={"HS_HOST": "127.0.0.1", "HS_PORT": str(server.port)},
    )
    assert result.returncode == 0, result.stderr
    assert [r.device_id for r in server.readings()] == ["mon-0002"]


def test_successive_runs_continue_seq_and_vitals(
    serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    # The cron case: one reading per run, the state file carries the device on.
    server = serve(answer_like_ingest)
    for _ in range(3):
        result = monitor(
            "--device",
            "mon-0003",
            "--patient",
            "P-1003",
            "--port",
            str(server.port),
            "--count",
            "1",
            state=tmp_path,
        )
        assert result.returncode == 0, result.stderr
    readings = server.readings()
    first = readings[0].seq
    assert first is not None
    assert [r.seq for r in readings] == [first, first + 1, first + 2]
    assert len({r.reading_id for r in readings}) == 3
    heart_rates = [r.vitals["heart_rate"] for r in readings]
    assert max(heart_rates) - min(heart_rates) <= 12


def test_vitals_drift_within_bounds_over_many_readings(
    serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    server = serve(answer_like_ingest)
    result = monitor(
        "--device",
        "mon-0004",
        "--patient",
        "P-1004",
        "--port",
        str(server.port),
        "--count",
        "60",
        "--interval",
        "0",
        state=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    readings = server.readings()
    assert len(readings) == 60
    for name in VITALS:
        series = [r.vitals[name] for r in readings]
        assert len(set(series)) > 1, f"{name} never changes"
    assert all(r.vitals["bp_sys"] > r.vitals["bp_dia"] for r in readings)
    assert all(88 <= r.vitals["spo2"] <= 100 for r in readings)


def test_an_err_reply_is_printed_and_fails_the_run(
    serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    def refuse_one(line: bytes) -> bytes:
        reading = parse_line(line, time.time())
        assert reading.seq is not None
        if reading.seq % 3 == 1:
            return WireError("out_of_range", "temp: too hot for the test").reply()
        return ok_reply(reading.reading_id)

    server = serve(refuse_one)
    result = monitor(
        "--device",
        "mon-0005",
        "--patient",
        "P-1005",
        "--port",
        str(server.port),
        "--count",
        "3",
        "--interval",
        "0",
        state=tmp_path,
    )
    assert result.returncode == 1
    printed = result.stdout.splitlines()
    assert len(printed) == 3
    assert sum(" ERR 422 out_of_range: temp: too hot for the test" in text for text in printed) == 1
    assert sum(" OK " in text for text in printed) == 2


def test_no_server_means_no_reply_and_exit_2(tmp_path: Path) -> None:
    result = monitor(
        "--device",
        "mon-0006",
        "--patient",
        "P-1006",
        "--port",
        str(free_port()),
        "--count",
        "2",
        "--interval",
        "0",
        # One resend each (the default 3 wait 0.5 + 1 + 2 s per reading).
        "--retries",
        "1",
        state=tmp_path,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("no reply from 127.0.0.1:") == 2
    assert result.stderr.count("unanswered (no reply); resending in 0.5 s") == 2


def test_a_server_that_never_answers_is_given_up_on(
    serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    server = serve(lambda line: None, hold_open=True)
    started = time.monotonic()
    result = monitor(
        "--device",
        "mon-0007",
        "--patient",
        "P-1007",
        "--port",
        str(server.port),
        "--count",
        "1",
        "--timeout",
        "1",
        "--retries",
        "1",
        state=tmp_path,
    )
    assert result.returncode == 2
    assert "no reply" in result.stderr
    assert len(server.lines) == 2, "sent once and resent once, then given up on"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("first", [None, b"ERR 503 busy: too many connections\n"])
def test_an_unanswered_or_busy_reading_is_resent_with_the_same_seq(
    first: bytes | None, serve: Callable[..., StubServer], tmp_path: Path
) -> None:
    answers: list[bytes | None] = [first]

    def once_then_ok(line: bytes) -> bytes | None:
        if answers:
            return answers.pop()  # the first attempt: no answer (connection closed) or busy
        return ok_reply(parse_line(line, time.time()).reading_id)

    server = serve(once_then_ok)
    result = monitor(
        *("--device", "mon-0009", "--patient", "P-1009", "--port", str(server.port)),
        *("--count", "1", "--timeout", "2"),
        state=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert len(server.lines) == 2 and server.lines[0] == server.lines[1], "the same line again"
    seq = parse_line(server.lines[0], time.time()).seq
    [printed] = result.stdout.splitlines()
    assert f" seq={seq} OK " in printed
    assert f"mon-0009 seq={seq} unanswered" in result.stderr
    assert "resending in 0.5 s" in result.stderr


def test_help(tmp_path: Path) -> None:
    result = monitor("--help", state=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: monitor.sh --device ID --patient ID")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--patient", "P-1"], "--device"),
        (["--device", "mon-1"], "--patient"),
        (["--device", "mon 1", "--patient", "P-1"], "--device"),
        (["--device", "d", "--patient", "p", "--count", "0"], "--count"),
        (["--device", "d", "--patient", "p", "--port", "70000"], "--port"),
        (["--device", "d", "--patient", "p", "--interval", "soon"], "--interval"),
        (["--device", "d", "--patient", "p", "--colour", "red"], "unknown option: --colour"),
        (["--device"], "--device needs a value"),
    ],
)
def test_bad_usage_exits_64(args: list[str], message: str, tmp_path: Path) -> None:
    result = monitor(*args, state=tmp_path)
    assert result.returncode == 64
    assert message in result.stderr


def test_script_is_executable_and_lint_clean() -> None:
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    assert shutil.which("shellcheck"), "shellcheck is installed by `make install`"
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_tls_delivers_readings_to_the_real_ingest_server(
    start_ingest: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = start_ingest()
    cert, key = issue_device(settings.tls.dir, "mon-tls1")
    ca = settings.tls.dir / "ca.crt"
    tls_args = ["--tls", "--port", str(settings.ingest.tls_port), "--count", "2", "--interval", "0"]
    tls_args += ["--cert", str(cert), "--key", str(key), "--ca", str(ca)]

    # ncat checks the server by name; openssl s_client can check an IP address too.
    for client, host in (("ncat", "localhost"), ("openssl", "127.0.0.1")):
        result = monitor(
            *("--device", "mon-tls1", "--patient", "P-2001", "--host", host),
            *("--tls-client", client, *tls_args),
            state=tmp_path / client,
        )
        assert result.returncode == 0, (client, result.stdout, result.stderr)
        printed = result.stdout.splitlines()
        assert len(printed) == 2, (client, printed)
        assert all(" mon-tls1 seq=" in text and " OK " in text for text in printed), printed

    # Another device's readings with this certificate are refused by the server.
    result = monitor(
        *("--device", "mon-tls2", "--patient", "P-2002", *tls_args),
        state=tmp_path / "other",
    )
    assert result.returncode == 1
    assert result.stdout.count("ERR 403 device_mismatch") == 2


def test_tls_without_a_readable_certificate_is_bad_usage(tmp_path: Path) -> None:
    result = monitor(
        *("--device", "mon-1", "--patient", "P-1", "--tls", "--cert", str(tmp_path / "no.crt")),
        state=tmp_path,
    )
    assert result.returncode == 64
    assert f"cannot read {tmp_path / 'no.crt'}" in result.stderr
