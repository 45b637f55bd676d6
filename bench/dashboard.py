"""Benchmark of the live ward dashboard: the page, the SSE server, and what it costs the pipeline.

Starts the embedded pipeline (Tansu, redis-server, ingest, processor, API)
through :class:`healthsync.supervisor.Pipeline` in a temporary run directory,
with an API key for a clinician, then measures:

1. the page: 200 patient tiles, each patient's device sending one reading a
   second, the page open in Debian's headless Chromium; the average time the
   page spends handling one update (its own Performance API clock,
   ``performance.now()`` around each update, plus the re-sorts it caused);
2. the SSE server's memory per client: the API process's RSS with no stream
   open and with 50 streams open while the 200 devices keep sending;
3. the pipeline's end-to-end rate (readings the processor stored per second,
   devices sending as fast as ingest answers) with no dashboard open, then
   with 50 SSE clients reading the stream (in a separate process).

Run: ``.venv/bin/python bench/dashboard.py [--patients 200] [--duration 30]
[--clients 50] [--rate-duration 15] [--rounds 2]``. Progress goes to stderr, the report to
stdout. Everything started is stopped on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from playwright.sync_api import sync_playwright
from redis import Redis

from healthsync.api.apikeys import ApiKeyStore
from healthsync.config import Settings
from healthsync.stack import free_port
from healthsync.supervisor import Pipeline

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_RATE_CONNECTIONS = 20
_RATE_WINDOW = 200


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


# --- devices --------------------------------------------------------------------------


async def ward_devices(host: str, port: int, patients: int, stop: asyncio.Event) -> int:
    """Each patient's monitor sends one reading a second; returns the readings acknowledged."""
    reader, writer = await asyncio.open_connection(host, port)
    answered = 0

    async def read() -> None:
        nonlocal answered
        while await reader.readline():
            answered += 1

    reading = asyncio.create_task(read())
    tick = 0
    while not stop.is_set():
        started = time.monotonic()
        lines = []
        for i in range(patients):
            hr = 60 + (i * 7 + tick) % 60
            spo2 = 90 + (i + tick) % 10
            lines.append(
                f"device_id=bw-{i:03d} patient_id=W-{i:03d} seq={tick} "
                f"hr={hr} spo2={spo2} rr={12 + (i + tick) % 12} temp=37.0 bp=120/80\n"
            )
        writer.write("".join(lines).encode())
        await writer.drain()
        tick += 1
        await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(reading, 5)
    return answered


async def flood(host: str, port: int, seconds: float, base: int) -> int:
    """Readings acknowledged in `seconds`, each connection keeping a window of lines in flight."""
    deadline = time.monotonic() + seconds

    async def one(conn: int) -> int:
        reader, writer = await asyncio.open_connection(host, port)
        done, seq = 0, 0
        while time.monotonic() < deadline:
            body = "".join(
                f"device_id=fl-{base}-{conn} patient_id=F-{conn:03d} seq={seq + k} "
                f"hr={60 + k % 30} spo2=97\n"
                for k in range(_RATE_WINDOW)
            )
            seq += _RATE_WINDOW
            writer.write(body.encode())
            for _ in range(_RATE_WINDOW):
                await reader.readline()
            done += _RATE_WINDOW
        writer.close()
        return done

    counts = await asyncio.gather(*(one(c) for c in range(_RATE_CONNECTIONS)))
    return sum(counts)


# --- SSE clients in their own process -------------------------------------------------


async def _sse_clients(host: str, port: int, token: str, n: int, seconds: float) -> None:
    request = (
        f"GET /v1/stream HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while await reader.read(65536):
                    pass
        writer.close()

    await asyncio.gather(*(client() for _ in range(n)))


def sse_clients(host: str, port: int, token: str, n: int, seconds: float) -> None:
    asyncio.run(_sse_clients(host, port, token, n, seconds))


def start_clients(settings: Settings, token: str, n: int, seconds: float) -> Any:
    process = multiprocessing.get_context("spawn").Process(
        target=sse_clients, args=(settings.api.host, settings.api.port, token, n, seconds)
    )
    process.start()
    return process


# --- phases ---------------------------------------------------------------------------


def page_phase(settings: Settings, token: str, patients: int, seconds: float) -> dict[str, float]:
    """Open the page, wait for every tile, then time `seconds` of live updates."""
    base = f"http://{settings.api.host}:{settings.api.port}"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{base}/")
        page.get_by_label("Access token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        # A locator, not a string predicate: the page's CSP forbids eval, for the bench too.
        page.locator("article[data-patient-id]").nth(patients - 1).wait_for(timeout=60_000)
        page.evaluate(
            "() => Object.assign(window.healthsyncStats, "
            "{updates: 0, updateMs: 0, sorts: 0, sortMs: 0})"
        )
        page.wait_for_timeout(seconds * 1000)
        stats: dict[str, float] = page.evaluate("() => ({...window.healthsyncStats})")
        browser.close()
    return stats


async def with_ward(settings: Settings, patients: int, body: Any) -> Any:
    """Run `body()` (in a thread) while the ward's devices send once a second."""
    stop = asyncio.Event()
    devices = asyncio.create_task(
        ward_devices(settings.ingest.host, settings.ingest.port, patients, stop)
    )
    try:
        return await asyncio.to_thread(body)
    finally:
        stop.set()
        await devices


def processed(redis: Redis, settings: Settings) -> int:
    key = settings.redis.keys.stats("processor")
    raw = redis.hget(key, "readings_processed_total")
    return int(raw) if raw else 0


def rate_phase(
    settings: Settings, redis: Redis, seconds: float, base: int, api_pid: int
) -> tuple[float, float, float]:
    """Ingest-acknowledged and processor-stored readings/s, and the API's CPU share meanwhile."""
    before = processed(redis, settings)
    api_before = cpu_s(api_pid)
    started = time.monotonic()
    acked = asyncio.run(flood(settings.ingest.host, settings.ingest.port, seconds, base))
    elapsed = time.monotonic() - started
    # Let the processor finish what was acknowledged, so both figures count the same readings.
    deadline = time.monotonic() + 30
    while processed(redis, settings) - before < acked and time.monotonic() < deadline:
        time.sleep(0.1)
    stored_elapsed = time.monotonic() - started
    stored = processed(redis, settings) - before
    if stored < acked:
        say(f"the processor stored {stored} of {acked} readings within 30 s of the end")
    api_share = (cpu_s(api_pid) - api_before) / stored_elapsed
    return acked / elapsed, stored / stored_elapsed, api_share


def run(pipeline: Pipeline, token: str, args: argparse.Namespace) -> str:
    say(f"starting the pipeline in {pipeline.run_dir}")
    pipeline.start()
    settings = pipeline.settings
    api_pid = pipeline.children["api"].process.pid  # type: ignore[union-attr]
    redis = Redis.from_url(str(settings.redis.url), **settings.redis.client_options())
    lines = []

    say(f"1. the page: {args.patients} tiles, one update per patient a second, {args.duration} s")
    stats = asyncio.run(
        with_ward(
            settings,
            args.patients,
            lambda: page_phase(settings, token, args.patients, args.duration),
        )
    )
    updates = max(1, int(stats["updates"]))
    sorts = max(1, int(stats["sorts"]))
    per_update = (stats["updateMs"] + stats["sortMs"]) / updates
    lines += [
        f"1. page, {args.patients} tiles updated once a second for {args.duration:.0f} s:",
        f"   updates handled: {int(stats['updates'])} ({stats['updates'] / args.duration:.0f}/s)",
        f"   average handling time per update: {stats['updateMs'] / updates:.3f} ms",
        f"   re-sorts: {int(stats['sorts'])}, average {stats['sortMs'] / sorts:.3f} ms",
        f"   per update including re-sorts: {per_update:.3f} ms (target <= 16 ms)",
    ]

    say(f"2. SSE memory: API RSS with 0 and {args.clients} streams open")

    def memory() -> tuple[int, int]:
        time.sleep(3)
        idle = rss_kib(api_pid)
        clients = start_clients(settings, token, args.clients, 15)
        time.sleep(10)
        busy = rss_kib(api_pid)
        clients.join(30)
        return idle, busy

    idle, busy = asyncio.run(with_ward(settings, args.patients, memory))
    lines += [
        f"2. SSE server memory (API process RSS, {args.patients} patients sending):",
        f"   no stream open: {idle / 1024:.1f} MiB; {args.clients} open: {busy / 1024:.1f} MiB",
        f"   per client: {(busy - idle) / args.clients:.0f} KiB",
    ]

    say(
        f"3. end-to-end rate, {args.rounds} rounds of {args.rate_duration} s without and "
        f"with {args.clients} clients"
    )
    figures: dict[bool, list[tuple[float, float, float]]] = {False: [], True: []}
    for round_no in range(args.rounds):
        # Alternating, so a change in what else runs on the machine hits both conditions.
        for with_clients in (False, True):
            clients = None
            if with_clients:
                clients = start_clients(settings, token, args.clients, args.rate_duration + 60)
                time.sleep(3)
            base = 2 * round_no + int(with_clients)
            figures[with_clients].append(
                rate_phase(settings, redis, args.rate_duration, base, api_pid)
            )
            if clients is not None:
                clients.terminate()
                clients.join(10)

    def row(label: str, runs: list[tuple[float, float, float]]) -> str:
        each = ", ".join(f"{stored:.0f}" for _, stored, _ in runs)
        acked = sum(r[0] for r in runs) / len(runs)
        stored = sum(r[1] for r in runs) / len(runs)
        api = 100 * sum(r[2] for r in runs) / len(runs)
        return (
            f"   {label:<18} {acked:8.0f} {stored:8.0f}   API CPU {api:5.1f}% of a core"
            f"   (stored per round: {each})"
        )

    mean = {k: sum(r[1] for r in v) / len(v) for k, v in figures.items()}
    lines += [
        "3. pipeline end-to-end rate (readings/s, mean of rounds; ingest-acknowledged,"
        " processor-stored):",
        row("no dashboard:", figures[False]),
        row(f"{args.clients} SSE clients:", figures[True]),
        f"   change with clients: {100 * (mean[True] / mean[False] - 1):+.1f}% stored",
        f"   load average at the end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
        f" on {os.cpu_count()} cores",
    ]
    redis.close()
    return "\n".join(lines)


def _terminate(_signum: int, _frame: object) -> NoReturn:
    raise SystemExit(143)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate-duration", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2, help="rate rounds per condition")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    run_dir = Path(tempfile.mkdtemp(prefix="healthsync-bench-dashboard-"))
    settings = Settings()
    settings.crypto.keyring_file = run_dir / "keyring.json"
    settings.kafka.embedded_tls = False
    settings.redis.embedded_tls = False
    # Plain HTTP on loopback: the browser would otherwise need the run's own CA.
    settings.api.tls_enabled = False
    settings.ingest.port = free_port()
    settings.api.port = free_port()
    settings.auth.api_keys_file = run_dir / "apikeys.json"
    settings.auth.audit_log_file = run_dir / "audit.jsonl"
    token = ApiKeyStore(settings.auth.api_keys_file).create("bench-clinician", "clinician")
    pipeline = Pipeline(settings, run_dir)
    failed = True
    try:
        report = run(pipeline, token, args)
        failed = False
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        say("stopping the pipeline")
        pipeline.stop()
        if failed or args.keep:
            say(f"run directory kept: {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
