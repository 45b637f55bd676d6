"""The EHR push sink against a FHIR endpoint served over real HTTP (`FakeEhr`,
tests/fhir/fake_ehr.py) when the EHR fails: retries, timeouts, Retry-After,
giving up, rejected Bundles and entries, and diagnostics without patient data.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from healthsync.config import FhirSettings
from healthsync.fhir.ehr_bundle import EhrPushError
from healthsync.fhir.ehr_push import EhrPushSink
from healthsync.fhir.observations import observations_for
from healthsync.fhir.patients import device_for, patient_for
from healthsync.stack import free_port
from tests.fhir.fake_ehr import (
    FAST,
    Canned,
    FakeEhr,
    SinkFactory,
    batch_of,
    ehr,
    make_sink,
    outcome,
    reading,
)
from tests.fhir.test_resources import TS

__all__ = ["ehr", "make_sink"]  # fixtures, used by name


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
    # The EHR runs the timed-out request too, late: the conditional update keeps one copy.
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


def test_a_refused_bundle_is_split_and_only_what_the_ehr_refuses_is_set_aside(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    # A 400 or 422 refuses the whole transaction over one resource. Raised, it had the
    # push send the same Bundle for good, and nothing after it reached the EHR.
    def refuse(resource: dict[str, Any]) -> str | None:
        spo2 = resource["identifier"][0]["value"].endswith("/spo2")
        return "Observation.code: unknown code" if spo2 else None

    ehr.refuse = refuse
    sink = make_sink(ehr_max_attempts=5)
    sink.write(batch_of(reading(1, patient_id="P-SECRET"), reading(2)))
    sink.flush()
    stored = ehr.by_identifier("Observation")
    assert sorted(stored) == ["r0001/heart_rate", "r0002/heart_rate"]
    refused = sink.take_refused()
    assert sorted(r.resource["identifier"][0]["value"] for r in refused) == [
        "r0001/spo2",
        "r0002/spo2",
    ]
    for item in refused:
        assert item.status == 422
        assert "HTTP 422" in item.reason
        assert "error processing: Observation.code: unknown code" in item.reason
        assert "P-SECRET" not in item.reason and "r0001" not in item.reason
    assert sink.take_refused() == []


def test_a_refusal_of_the_push_itself_raises_at_once_and_sets_nothing_aside(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    """401: every resource would be refused alike; the push waits for its credentials."""
    ehr.fail(401, body=outcome("token expired", "login"))
    sink = make_sink(ehr_max_attempts=5)
    sink.write(batch_of(reading(1)))
    with pytest.raises(EhrPushError, match="HTTP 401") as caught:
        sink.flush()
    assert caught.value.status == 401
    assert len(ehr.received) == 1  # neither retried nor split
    assert sink.take_refused() == []


def test_diagnostics_that_echo_what_was_sent_are_scrubbed(
    ehr: FakeEhr, make_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """An EHR may quote the offending resource back: its identifiers never reach the log."""
    echo = "Patient P-SECRET-77 (device mon-secret-9, reading r0001): subject not found"
    ehr.fail(503, body=outcome(echo), times=1)
    ehr.refuse = lambda _resource: echo
    sink = make_sink(ehr_max_attempts=3)
    sink.write(batch_of(reading(1, patient_id="P-SECRET-77", device_id="mon-secret-9")))
    with caplog.at_level(logging.DEBUG):
        sink.flush()
    refused = sink.take_refused()
    assert len(refused) == 2
    told = " ".join(r.reason for r in refused) + " ".join(
        str(getattr(r, "error", "")) + r.getMessage() for r in caplog.records
    )
    assert "subject not found" in told, "the diagnostics are still there"
    for secret in ("P-SECRET-77", "mon-secret-9", "r0001"):
        assert secret not in told, secret


def test_a_failed_entry_in_the_transaction_response_is_found_and_set_aside(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    failed = {
        "status": "422 Unprocessable Entity",
        "outcome": outcome("vs-2: value or dataAbsentReason required"),
    }
    ok = {"status": "201 Created"}
    reply = {"resourceType": "Bundle", "type": "transaction-response"}
    # The Bundle of both, then the first alone (run), then the second alone, refused.
    ehr.canned = [Canned(200, {**reply, "entry": [{"response": ok}, {"response": failed}]})]
    ehr.canned += [None, Canned(200, {**reply, "entry": [{"response": failed}]})]
    sink = make_sink()
    sink.write(batch_of(reading(1)))
    sink.flush()
    [refused] = sink.take_refused()
    assert refused.status == 422
    assert "entry 0 of a transaction with status 422: error invalid: vs-2" in refused.reason
    assert list(ehr.by_identifier("Observation")) == ["r0001/heart_rate"]


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


def test_a_404_once_the_ehr_accepted_a_transaction_sets_the_resource_aside(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    """The base URL is right: the 404 is a conditional reference that found nothing (here,
    to a Patient the EHR refused)."""
    ehr.check_references = True
    ehr.refuse = lambda r: "birthDate required" if r["resourceType"] == "Patient" else None
    sink = make_sink()
    sink.add([device_for("mon-0001", TS)])
    sink.flush()
    patient = patient_for("P-1001", {}, "urn:oid:2.16.840.1.113883.19.5", TS)
    sink.add([patient, *observations_for(reading(1))])
    sink.flush()
    refused = sink.take_refused()
    assert sorted((r.resource["resourceType"], r.status) for r in refused) == [
        ("Observation", 404),
        ("Observation", 404),
        ("Patient", 422),
    ]
    found_nothing = [r.reason for r in refused if r.status == 404]
    assert all("No resources match this search" in reason for reason in found_nothing)
    assert all("P-1001" not in r.reason for r in refused)
    assert list(ehr.by_identifier("Device")) == ["mon-0001"]


def test_a_404_before_the_ehr_accepted_anything_holds_the_push(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    """A wrong base URL would refuse every resource alike: nothing is set aside."""
    ehr.fail(404, body=outcome("Unknown resource type", "not-found"))
    sink = make_sink()
    sink.write(batch_of(reading(1)))
    with pytest.raises(EhrPushError, match="HTTP 404"):
        sink.flush()
    assert sink.take_refused() == []


def test_diagnostics_that_echo_a_conditional_references_identifier_are_scrubbed(
    ehr: FakeEhr, make_sink: SinkFactory
) -> None:
    """A reference to a Patient of an earlier Bundle names the patient only inside its
    search URL: an EHR that quotes the patient id back must not carry it to the log."""
    sink = make_sink()
    sink.add([patient_for("P-SECRET-9", {}, "urn:oid:2.16.840.1.113883.19.5", TS)])
    sink.flush()
    ehr.refuse = lambda r: (
        "no Patient P-SECRET-9 here" if r["resourceType"] == "Observation" else None
    )
    sink.add(observations_for(reading(1, patient_id="P-SECRET-9")))
    sink.flush()
    refused = sink.take_refused()
    assert len(refused) == 2
    assert all("no Patient [redacted] here" in r.reason for r in refused), refused[0].reason
