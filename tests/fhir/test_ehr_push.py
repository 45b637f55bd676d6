"""The EHR push sink against a FHIR endpoint served over real HTTP.

A real FHIR server (HAPI FHIR, a Java application) cannot run on this machine,
so `FakeEhr` stands in for the EHR: an http.server on 127.0.0.1 port 0 that
answers transaction Bundles the way a FHIR R4 server does. It runs each entry
as a conditional create (201 the first time, 200 when a resource with that
identifier exists) or a PUT by id, resolves `urn:uuid` references to the ids
it assigns, optionally rejects references to resources it does not have, and
can be told to answer the next requests with a failure or after a delay.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import orjson
import pytest

from healthsync.config import FhirSettings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.errors import ConfigError
from healthsync.fhir.ehr_push import EhrPushError, EhrPushSink, full_url, transaction_bundle
from healthsync.fhir.observations import observations_for, reading_bundle
from healthsync.fhir.terminology import READING_ID_SYSTEM
from healthsync.stack import free_port
from healthsync.stream.contracts import Sink

# Fast retries: the tests wait milliseconds where the defaults wait seconds.
FAST = {"backoff_base_s": 0.001, "backoff_max_s": 0.05}


@dataclass
class Received:
    headers: dict[str, str]
    bundle: dict[str, Any]
    at: float


@dataclass
class Canned:
    status: int
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def outcome(diagnostics: str, code: str = "invalid") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}],
    }


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up waiting on a stalled answer (the tests' `delays`) closed
        # its end: nothing went wrong here, so no traceback in the test log.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class FakeEhr:
    """The FHIR endpoint of an EHR: stores resources, runs transactions, fails on request."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}  # "Type/id" -> resource
        self.received: list[Received] = []
        self.answered: list[Canned] = []
        # Answers for the next requests instead of running them; None runs that one.
        self.canned: list[Canned | None] = []
        self.delays: list[float] = []  # seconds to stall the next requests
        self.check_references = False
        self._next_id = 0
        self._lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def start(self) -> FakeEhr:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def fail(self, status: int, times: int = 1, **kwargs: Any) -> None:
        self.canned.extend(Canned(status, **kwargs) for _ in range(times))

    def by_identifier(self, rtype: str) -> dict[str, dict[str, Any]]:
        return {
            i["value"]: r
            for key, r in self.resources.items()
            if key.startswith(rtype + "/")
            for i in r.get("identifier", [])
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ehr = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with ehr._lock:
                    ehr.received.append(
                        Received(dict(self.headers.items()), orjson.loads(body), time.monotonic())
                    )
                    delay = ehr.delays.pop(0) if ehr.delays else 0.0
                    canned = ehr.canned.pop(0) if ehr.canned else None
                time.sleep(delay)
                if canned is None:
                    with ehr._lock:
                        canned = ehr.transaction(orjson.loads(body))
                with ehr._lock:
                    ehr.answered.append(canned)
                self._answer(canned)

            def _answer(self, canned: Canned) -> None:
                payload = orjson.dumps(canned.body) if canned.body is not None else b""
                self.send_response(canned.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in canned.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def transaction(self, bundle: dict[str, Any]) -> Canned:
        """Run a transaction Bundle all or nothing, as a FHIR server does."""
        if bundle.get("resourceType") != "Bundle" or bundle.get("type") != "transaction":
            return Canned(400, outcome("not a transaction Bundle"))
        staged: dict[str, dict[str, Any]] = {}
        targets: list[tuple[str, str]] = []  # (Type/id, status) per entry
        for entry in bundle["entry"]:
            request, resource = entry["request"], entry["resource"]
            target = self._target(request, resource["resourceType"], staged)
            if target is None:
                return Canned(400, outcome(f"unsupported request {request['method']}"))
            key, status, write = target
            if write:
                staged[key] = resource
            targets.append((key, status))
        resolved = {
            e["fullUrl"]: key for e, (key, _s) in zip(bundle["entry"], targets, strict=True)
        }
        for key, resource in staged.items():
            stored = _resolve(resource, resolved)
            stored["id"] = key.split("/", 1)[1]
            staged[key] = stored
        unknown = self._unknown_reference(staged) if self.check_references else None
        if unknown is not None:
            return Canned(400, outcome(f"reference to an unknown {unknown.split('/')[0]}"))
        self.resources.update(staged)
        entries = [
            {"response": {"status": status, "location": f"{key}/_history/1"}}
            for key, status in targets
        ]
        return Canned(
            200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}
        )

    def _target(
        self, request: dict[str, Any], rtype: str, staged: dict[str, dict[str, Any]]
    ) -> tuple[str, str, bool] | None:
        """Where an entry goes, its status, and whether it writes; None if not supported."""
        if request["method"] == "POST" and "ifNoneExist" in request:
            query = parse_qs(request["ifNoneExist"])["identifier"][0]
            system, value = query.split("|", 1)
            value = value.replace("\\|", "|").replace("\\,", ",").replace("\\$", "$")
            match = [
                key
                for key, r in {**self.resources, **staged}.items()
                if key.startswith(rtype + "/")
                and {"system": system, "value": value} in r.get("identifier", [])
            ]
            if match:
                return match[0], "200 OK", False
            self._next_id += 1
            return f"{rtype}/{self._next_id}", "201 Created", True
        if request["method"] == "PUT" and request["url"].startswith(rtype + "/"):
            key = request["url"]
            return key, "200 OK" if key in self.resources else "201 Created", True
        return None

    def _unknown_reference(self, staged: dict[str, dict[str, Any]]) -> str | None:
        for resource in staged.values():
            for ref in _references(resource):
                if ref not in self.resources and ref not in staged:
                    return ref
        return None


def _resolve(value: Any, resolved: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: _resolve(v, resolved) for k, v in value.items()}
        if out.get("reference") in resolved:
            out["reference"] = resolved[out["reference"]]
        return out
    if isinstance(value, list):
        return [_resolve(v, resolved) for v in value]
    return value


def _references(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield value["reference"]
        for v in value.values():
            yield from _references(v)
    elif isinstance(value, list):
        for v in value:
            yield from _references(v)


def reading(n: int, patient_id: str = "P-1001", device_id: str = "mon-0001") -> Reading:
    return Reading(
        reading_id=f"r{n:04d}",
        device_id=device_id,
        patient_id=patient_id,
        ts=1_795_787_117.0 + n,
        received_at=1_795_787_117.5 + n,
        vitals={"heart_rate": 78, "spo2": 95},
    )


def batch_of(*readings: Reading) -> Batch:
    """A batch as the processor's FHIR step leaves it: (patient key, Observation) pairs."""
    batch = Batch(list(readings))
    for r in readings:
        batch.observations.extend((r.patient_id, o) for o in observations_for(r))
    return batch


@pytest.fixture
def ehr() -> Iterator[FakeEhr]:
    server = FakeEhr().start()
    yield server
    server.stop()


SinkFactory = Callable[..., EhrPushSink]


@pytest.fixture
def make_sink(ehr: FakeEhr) -> Iterator[SinkFactory]:
    sinks: list[EhrPushSink] = []

    def make(backoff: dict[str, float] | None = None, **fhir: Any) -> EhrPushSink:
        settings = FhirSettings(ehr_base_url=ehr.base_url, **fhir)
        sink = EhrPushSink(settings, **(FAST if backoff is None else backoff))
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def test_sends_transaction_bundles_of_at_most_the_configured_size(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    sink: Sink = make_sink(ehr_batch_size=4)  # what the processor sees
    batch = batch_of(*(reading(n) for n in range(5)))  # 10 Observations
    sink.write(batch)
    assert ehr.received == []  # write only collects
    sink.flush()

    assert [len(r.bundle["entry"]) for r in ehr.received] == [4, 4, 2]
    assert {r.bundle["type"] for r in ehr.received} == {"transaction"}
    entry = ehr.received[0].bundle["entry"][0]
    assert entry["request"] == {
        "method": "POST",
        "url": "Observation",
        "ifNoneExist": f"identifier={READING_ID_SYSTEM}|r0000/heart_rate",
    }
    assert entry["fullUrl"].startswith("urn:uuid:")
    assert entry["fullUrl"] == full_url(batch.observations[0][1])
    assert entry["resource"]["valueQuantity"]["value"] == 78
    assert len(ehr.by_identifier("Observation")) == 10


def test_a_readings_bundle_is_pushed_as_its_observations(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    batch = Batch([reading(1)])
    batch.observations.append(("P-1001", reading_bundle(reading(1), observations_for(reading(1)))))
    sink = make_sink()
    sink.write(batch)
    sink.flush()
    [request] = ehr.received
    assert [e["resource"]["resourceType"] for e in request.bundle["entry"]] == ["Observation"] * 2
    assert len(ehr.by_identifier("Observation")) == 2


def test_full_urls_are_deterministic_and_distinct() -> None:
    resources = [o for n in range(3) for o in observations_for(reading(n))]
    first = [e["fullUrl"] for e in transaction_bundle(resources)["entry"]]
    again = [e["fullUrl"] for e in transaction_bundle(resources)["entry"]]
    assert first == again
    assert len(set(first)) == len(resources)


def test_a_replayed_batch_creates_nothing_twice(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    batch = batch_of(reading(1), reading(2))
    sink = make_sink()
    sink.write(batch)
    sink.write(batch)  # the processor retried write: still one copy of each
    sink.flush()
    assert len(ehr.received[0].bundle["entry"]) == 4
    # After a crash another processor replays the same batch.
    replay = make_sink()
    replay.write(batch)
    replay.flush()

    assert len(ehr.resources) == 4
    replayed = ehr.answered[1].body
    assert replayed is not None
    assert [e["response"]["status"] for e in replayed["entry"]] == ["200 OK"] * 4


def test_retries_503_then_succeeds(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    ehr.fail(503, times=2, body=outcome("database restarting", "transient"))
    sink = make_sink(ehr_max_attempts=3)
    sink.write(batch_of(reading(1)))
    sink.flush()
    assert len(ehr.received) == 3
    assert len(ehr.by_identifier("Observation")) == 2


def test_a_timeout_is_retried(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    ehr.delays.append(0.5)
    sink = make_sink(ehr_timeout_s=0.2, ehr_max_attempts=2)
    sink.write(batch_of(reading(1)))
    sink.flush()
    assert len(ehr.received) == 2
    # The EHR runs the timed-out request too, late: conditional create keeps one copy.
    deadline = time.monotonic() + 5
    while len(ehr.answered) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(ehr.answered) == 2
    assert len(ehr.by_identifier("Observation")) == 2


def test_retry_after_is_honoured(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    ehr.fail(429, headers={"Retry-After": "1"})
    sink = make_sink(backoff={"backoff_base_s": 0.001, "backoff_max_s": 2.0})
    sink.write(batch_of(reading(1)))
    sink.flush()
    waited = ehr.received[1].at - ehr.received[0].at
    assert 0.95 <= waited < 2.0


def test_retry_after_is_capped_by_the_maximum_backoff(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    ehr.fail(503, headers={"Retry-After": "3600"})
    sink = make_sink(backoff={"backoff_base_s": 0.001, "backoff_max_s": 0.1})
    sink.write(batch_of(reading(1)))
    sink.flush()
    assert ehr.received[1].at - ehr.received[0].at < 1.0


def test_gives_up_after_max_attempts(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    ehr.fail(503, times=10)
    sink = make_sink(ehr_max_attempts=3)
    sink.write(batch_of(reading(1)))
    with pytest.raises(EhrPushError, match=r"gave up after 3 attempts.*503") as caught:
        sink.flush()
    assert caught.value.status == 503
    assert len(ehr.received) == 3


def test_an_unreachable_ehr_raises_after_max_attempts() -> None:
    settings = FhirSettings(ehr_base_url=f"http://127.0.0.1:{free_port()}/fhir", ehr_max_attempts=2)
    with EhrPushSink(settings, **FAST) as sink:
        sink.write(batch_of(reading(1)))
        with pytest.raises(EhrPushError, match=r"gave up after 2 attempts.*ConnectError"):
            sink.flush()


def test_400_raises_at_once_with_the_diagnostics_and_no_patient_data(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    ehr.fail(400, body=outcome("Observation.code: unknown LOINC code", "code-invalid"))
    sink = make_sink(ehr_max_attempts=5)
    sink.write(batch_of(reading(1, patient_id="P-SECRET")))
    with pytest.raises(EhrPushError) as caught:
        sink.flush()
    message = str(caught.value)
    assert "HTTP 400" in message
    assert "error code-invalid: Observation.code: unknown LOINC code" in message
    assert "P-SECRET" not in message and "r0001" not in message
    assert caught.value.status == 400
    assert len(ehr.received) == 1  # not retried


def test_diagnostics_that_echo_what_was_sent_are_scrubbed(
    ehr: FakeEhr, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An EHR may quote the offending resource back: its identifiers never reach the log."""
    echo = "Patient P-SECRET-77 (device mon-secret-9, reading r0001): subject not found"
    ehr.fail(503, body=outcome(echo), times=1)
    ehr.fail(422, body=outcome(echo), times=1)
    sink = make_sink(ehr_max_attempts=3)
    sink.write(batch_of(reading(1, patient_id="P-SECRET-77", device_id="mon-secret-9")))
    with caplog.at_level(logging.DEBUG), pytest.raises(EhrPushError) as caught:
        sink.flush()
    told = str(caught.value) + " ".join(
        str(getattr(r, "error", "")) + r.getMessage() for r in caplog.records
    )
    assert "subject not found" in told, "the diagnostics are still there"
    for secret in ("P-SECRET-77", "mon-secret-9", "r0001"):
        assert secret not in told, secret


def test_a_failed_entry_in_the_transaction_response_raises(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    failed = {
        "status": "422 Unprocessable Entity",
        "outcome": outcome("vs-2: value or dataAbsentReason required"),
    }
    ok = {"status": "201 Created"}
    reply = {"resourceType": "Bundle", "type": "transaction-response"}
    ehr.fail(200, body={**reply, "entry": [{"response": ok}, {"response": failed}]})
    sink = make_sink()
    sink.write(batch_of(reading(1)))
    with pytest.raises(EhrPushError, match=r"entry 1 .* 422: error invalid: vs-2"):
        sink.flush()


def test_flush_sends_everything_or_raises_and_the_retry_completes(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    sink = make_sink(ehr_batch_size=2, ehr_max_attempts=1)
    batch = batch_of(reading(1), reading(2), reading(3))  # 6 Observations, 3 Bundles
    ehr.canned = [None, Canned(500)]  # the first Bundle goes through, the second fails
    sink.write(batch)
    with pytest.raises(EhrPushError, match="HTTP 500"):
        sink.flush()
    assert len(ehr.by_identifier("Observation")) == 2
    # The processor retries the whole batch: write again, flush again.
    sink.write(batch)
    sink.flush()
    assert len(ehr.by_identifier("Observation")) == 6
    assert len(ehr.resources) == 6


def test_resources_without_an_identifier_are_put_by_id_so_changes_reach_the_ehr(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    flag = {
        "resourceType": "Flag",
        "id": "a1",
        "status": "active",
        "code": {"text": "Heart rate outside high (warning)"},
        "subject": {"reference": "Patient/P-1001"},
    }
    sink = make_sink()
    sink.add([flag])
    sink.flush()
    sink.add([{**flag, "status": "inactive"}])
    sink.flush()
    assert ehr.received[0].bundle["entry"][0]["request"] == {"method": "PUT", "url": "Flag/a1"}
    assert list(ehr.resources) == ["Flag/a1"]
    assert ehr.resources["Flag/a1"]["status"] == "inactive"


def test_references_within_a_bundle_follow_the_ids_the_ehr_assigns(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    ehr.check_references = True
    patient = {
        "resourceType": "Patient",
        "id": "P-1001",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-7"}],
    }
    device = {"resourceType": "Device", "id": "mon-0001"}
    sink = make_sink()
    sink.add([patient, device, *observations_for(reading(1))])
    sink.flush()

    (stored_patient,) = ehr.by_identifier("Patient").values()
    assert stored_patient["id"] != "P-1001"  # the EHR chose the id of the created Patient
    observations = ehr.by_identifier("Observation").values()
    assert len(observations) == 2
    for observation in observations:
        assert observation["subject"] == {"reference": f"Patient/{stored_patient['id']}"}
        assert observation["device"] == {"reference": "Device/mon-0001"}


def test_sends_the_configured_headers(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    sink = make_sink(ehr_headers={"Authorization": "Bearer s3cret"})
    sink.write(batch_of(reading(1)))
    sink.flush()
    headers = {k.lower(): v for k, v in ehr.received[0].headers.items()}
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["content-type"] == "application/fhir+json"
    assert headers["accept"] == "application/fhir+json"


def test_logs_counts_only(
    ehr: FakeEhr, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ehr.fail(503, body=outcome("busy", "transient"))
    sink = make_sink()
    sink.write(batch_of(reading(1, patient_id="P-SECRET")))
    with caplog.at_level(logging.INFO, logger="healthsync.fhir.ehr_push"):
        sink.flush()
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(info) == 1
    counts = vars(info[0])
    assert (counts["bundles"], counts["resources_created"], counts["resources_existing"]) == (
        1,
        2,
        0,
    )
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        assert "P-SECRET" not in text and "r0001" not in text


def test_an_empty_flush_sends_nothing(ehr: FakeEhr, make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.write(Batch([]))
    sink.flush()
    assert ehr.received == []


def test_off_without_a_base_url() -> None:
    assert FhirSettings().ehr_base_url is None
    with pytest.raises(ConfigError, match="FHIR base URL"):
        EhrPushSink(FhirSettings())
