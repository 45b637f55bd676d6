"""A real FHIR client against the whole pipeline.

The test runs the whole pipeline and reads back, with the `fhirclient` library,
what a device sent over TCP.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from fhirclient.client import FHIRClient
from fhirclient.models.capabilitystatement import CapabilityStatement as ClientCapability
from fhirclient.models.observation import Observation as ClientObservation

from healthsync.domain.readings import isoformat_ms
from healthsync.supervisor import Pipeline
from tests.api.fhir_seed import BP, HR, LOINC, SPO2, TEMP
from tests.conftest import Credentials, Device, wait_for


@pytest.mark.slow
def test_fhirclient_reads_back_the_readings_sent_over_tcp(
    pipeline: Pipeline, device: Device, credentials: Credentials
) -> None:
    patient = f"P-{uuid.uuid4().hex[:6]}"
    # Whole minutes within the last hour: inside any recent window the store keeps.
    start = float(int(time.time() // 60 * 60) - 3600)
    sent: dict[tuple[float, str], float] = {}
    for seq in range(6):
        ts = start + 60 * seq
        hr, spo2, temp = 70 + seq, 94 + seq % 5, round(36.6 + seq / 10, 1)
        line = (
            f"device_id=mon-fc patient_id={patient} seq={seq} ts={isoformat_ms(ts)} "
            f"hr={hr} spo2={spo2}% temp={temp} bp={118 + seq}/{76 + seq}"
        )
        reply = device.send(line.encode())
        assert reply.startswith("OK "), reply
        sent |= {(ts, HR): hr, (ts, SPO2): spo2, (ts, TEMP): temp}
        sent |= {(ts, "8480-6"): 118 + seq, (ts, "8462-4"): 76 + seq}

    api = pipeline.settings.api
    client = FHIRClient(
        settings={"app_id": "healthsync-test", "api_base": f"http://{api.host}:{api.port}/fhir/"}
    )
    # A SMART app would get a token from the EHR's authorization server; this one is signed
    # by the test identity provider: a clinician's token, narrowed by a SMART scope.
    token = credentials.token(sub="smart-app", roles=["clinician"], scope="user/*.read launch")
    client.server.session.headers["Authorization"] = f"Bearer {token}"
    try:
        capability = client.server.capabilityStatement
        assert isinstance(capability, ClientCapability)
        assert capability.fhirVersion == "4.0.1"

        def search(**struct: str) -> list[Any]:
            found = ClientObservation.where(struct=struct).perform_resources_iter(client.server)
            return list(found)

        def code_of(observation: Any) -> str:
            return str(
                next(c.code for c in observation.code.coding if c.code in (HR, SPO2, TEMP, BP))
            )

        def all_stored() -> list[Any] | None:
            # _count=4 makes the client follow several `next` links.
            found = search(patient=patient, category="vital-signs", _count="4")
            return found if len(found) == 6 * 4 else None

        observations = wait_for(all_stored, timeout=60, what="the readings as Observations")
        received: dict[tuple[float, str], float] = {}
        for observation in observations:
            ts = observation.effectiveDateTime.datetime.timestamp()
            assert observation.subject.reference == f"Patient/{patient}"
            assert observation.status == "final"
            if code_of(observation) == BP:
                assert observation.valueQuantity is None
                for part in observation.component:
                    received[ts, part.code.coding[0].code] = part.valueQuantity.value
                    assert part.valueQuantity.code == "mm[Hg]"
            else:
                received[ts, code_of(observation)] = observation.valueQuantity.value
                assert observation.valueQuantity.system == "http://unitsofmeasure.org"
        assert received == sent
        times = [o.effectiveDateTime.datetime for o in observations]
        assert times == sorted(times, reverse=True), "newest first by default"

        heart = search(patient=f"Patient/{patient}", code=f"{LOINC}|{HR}", _sort="date")
        assert [o.valueQuantity.value for o in heart] == [70 + seq for seq in range(6)]
        later = search(subject=patient, code=HR, date="ge" + isoformat_ms(start + 180))
        assert sorted(o.valueQuantity.value for o in later) == [73, 74, 75]

        again = ClientObservation.read(heart[0].id, client.server)
        assert again.valueQuantity.value == 70
    finally:
        client.server.session.close()
