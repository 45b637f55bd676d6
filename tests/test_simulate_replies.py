"""What the simulator does with the server's replies: ERR counted by reason,
dropped connections reopened and unanswered lines resent or timed out, and the
summary of a run."""

from __future__ import annotations

import time

from healthsync.domain.readings import Reading
from healthsync.simulate import IngestEndpoint, SimulationOptions, SimulationStats, run_simulation
from healthsync.wire import WireError
from tests.simulate_cases import IngestStub, run


def test_err_replies_are_counted_by_reason() -> None:
    def reject_odd(reading: Reading) -> WireError | None:
        assert reading.seq is not None
        return WireError("out_of_range", "for the test") if reading.seq % 2 else None

    async def scenario() -> None:
        async with IngestStub(reject=reject_odd) as server:
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=2, rate=1000, duration=None, count=40, seq_start=0),
            )
        assert stats.sent == 80
        assert stats.ok == 40
        assert stats.errors == {"422 out_of_range": 40}
        assert stats.err == 40
        assert "422 out_of_range x40" in stats.summary()

    run(scenario())


def test_dropped_connection_is_reopened_and_unanswered_lines_resent() -> None:
    async def scenario() -> None:
        async with IngestStub(drop_after=20) as server:
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=1, rate=2000, duration=None, count=500),
            )
        assert stats.reconnects >= 1 and stats.connections == stats.reconnects + 1
        assert stats.resent >= 1
        assert stats.sent == stats.ok == 500
        assert stats.unanswered == 0
        # The server stored the resent lines twice under the same id: the
        # downstream deduplication by reading_id is what makes a resend safe.
        assert len(set(server.ids)) == 500 < len(server.ids)

    run(scenario())


def test_unanswered_lines_are_waited_for_only_up_to_the_reply_timeout() -> None:
    async def scenario() -> None:
        async with IngestStub(silent=True) as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=2, rate=50, duration=0.5, reply_timeout=0.5),
            )
        assert time.monotonic() - started < 3
        assert stats.ok == 0
        assert stats.unanswered == stats.sent > 0
        assert len(server.readings) == stats.sent

    run(scenario())


def test_a_full_window_does_not_hold_the_run_past_its_duration() -> None:
    async def scenario() -> None:
        async with IngestStub(silent=True) as server:
            started = time.monotonic()
            stats = await run_simulation(
                IngestEndpoint("127.0.0.1", server.port),
                SimulationOptions(devices=1, rate=1000, duration=0.5, window=10, reply_timeout=0.2),
            )
        assert time.monotonic() - started < 3
        assert stats.sent == stats.unanswered == 10

    run(scenario())


def test_summary_reads_as_one_paragraph() -> None:
    stats = SimulationStats(devices=3, sent=10, ok=9, errors={"422 out_of_range": 1}, elapsed=2.0)
    stats.episodes["fever"] = 2
    for ms in (1, 2, 3, 4):
        stats.add_latency(ms / 1000)
    text = stats.summary()
    assert "\n" not in text
    assert "3 simulated devices sent 10 readings in 2.0 s (5/s)" in text
    assert "9 OK, 1 ERR (422 out_of_range x1)" in text
    assert "2 clinical episodes started (fever 2)" in text
    assert "p50 2.0 ms" in text and "max 4.0 ms" in text
    assert SimulationStats().progress_line() == "sent 0  ok 0  err 0  rate 0/s  p95 ack n/a"
