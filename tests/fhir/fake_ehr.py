"""`FakeEhr`, the FHIR endpoint the EHR push sink talks to, and the readings,
batches and sinks the push tests send it.

A real FHIR server (HAPI FHIR, a Java application) cannot run on this machine,
so `FakeEhr` stands in for the EHR: an http.server on 127.0.0.1 port 0 that
answers transaction Bundles the way a FHIR R4 server does. It runs each entry
as a conditional update on an identifier (201 and an id of its own the first
time, 200 replacing the resource that has it after) or a PUT by id, resolves
`urn:uuid` references to the ids it assigns, optionally rejects references to
resources it does not have, and can be told to answer the next requests with a
failure or after a delay.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict
from urllib.parse import parse_qs

import orjson
import pytest

from healthsync.config import FhirSettings
from healthsync.domain.batch import Batch
from healthsync.domain.readings import Reading
from healthsync.fhir.ehr_push import EhrPushSink
from healthsync.fhir.observations import observations_for
from healthsync.fhir.terminology import ResourceLoader

# Fast retries: the tests wait milliseconds where the defaults wait seconds.


class Backoff(TypedDict):
    backoff_base_s: float
    backoff_max_s: float


FAST: Backoff = {"backoff_base_s": 0.001, "backoff_max_s": 0.05}


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
        # Refuse references to what the EHR does not hold (HAPI FHIR's default); else
        # store them as they are, conditional ones that found nothing too.
        self.check_references = False
        # Refuses a transaction holding a resource this returns a reason for (422), as an
        # EHR holding resources to a profile of its own does.
        self.refuse: Callable[[dict[str, Any]], str | None] | None = None
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
            reason = self.refuse(resource) if self.refuse is not None else None
            if reason is not None:
                return Canned(422, outcome(reason, "processing"))
            if write:
                staged[key] = resource
            targets.append((key, status))
        resolved = {
            e["fullUrl"]: key for e, (key, _s) in zip(bundle["entry"], targets, strict=True)
        }
        for key, resource in staged.items():
            stored = _resolve(resource, resolved)
            unmatched = self._resolve_conditional(stored, staged)
            if unmatched is not None and self.check_references:
                # As HAPI FHIR answers a conditional reference that finds nothing.
                text = f"Invalid match URL {unmatched} - No resources match this search"
                return Canned(404, outcome(text, "not-found"))
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
        if request["method"] == "PUT" and request["url"].startswith(rtype + "?"):
            match = self._match(rtype, request["url"].split("?", 1)[1], staged)
            if match:
                return match, "200 OK", True
            return self._new_id(rtype), "201 Created", True
        if request["method"] == "PUT" and request["url"].startswith(rtype + "/"):
            key = request["url"]
            return key, "200 OK" if key in self.resources else "201 Created", True
        return None

    def _match(self, rtype: str, query: str, staged: dict[str, dict[str, Any]]) -> str | None:
        """The resource of `rtype` that an `identifier=system|value` search finds."""
        system, value = parse_qs(query)["identifier"][0].split("|", 1)
        value = value.replace("\\|", "|").replace("\\,", ",").replace("\\$", "$")
        wanted = {"system": system, "value": value}
        for key, r in {**self.resources, **staged}.items():
            if key.startswith(rtype + "/") and wanted in r.get("identifier", []):
                return key
        return None

    def _resolve_conditional(self, value: Any, staged: dict[str, dict[str, Any]]) -> str | None:
        """Point conditional references (`Type?identifier=...`) in `value` at what they
        find, in place; the first that finds nothing, if any (left as it is)."""
        unmatched: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                ref = node.get("reference")
                if isinstance(ref, str) and "?" in ref:
                    rtype, query = ref.split("?", 1)
                    found = self._match(rtype, query, staged)
                    if found is None:
                        unmatched.append(ref)
                    else:
                        node["reference"] = found
                for item in node.values():
                    walk(item)

        walk(value)
        return unmatched[0] if unmatched else None

    def _new_id(self, rtype: str) -> str:
        self._next_id += 1
        return f"{rtype}/{self._next_id}"

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

    def make(
        backoff: Backoff | None = None, load: ResourceLoader | None = None, **fhir: Any
    ) -> EhrPushSink:
        settings = FhirSettings(ehr_base_url=ehr.base_url, **fhir)
        sink = EhrPushSink(settings, load=load, **(FAST if backoff is None else backoff))
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()
