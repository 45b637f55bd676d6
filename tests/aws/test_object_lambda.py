"""The S3 Object Lambda against moto's S3, Secrets Manager and KMS in server mode.

Objects go into moto's S3 and the handler fetches them from real presigned
URLs. moto does not implement WriteGetObjectResponse, so the handler's S3
client is pointed (AWS_ENDPOINT_URL_S3) at a small HTTP server on loopback
that records the request botocore really sends: its status, error and
forwarded headers and its body are what S3 would pass to the reader.
"""

from __future__ import annotations

import ast
import csv
import http.server
import io
import logging
import subprocess
import sys
import threading
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from healthsync.aws import object_lambda, package
from healthsync.cli import main
from healthsync.domain.readings import Reading
from healthsync.security.keyring import Keyring
from healthsync.store.archive.columns import readings_table
from healthsync.store.archive.deidentify import Deidentifier
from healthsync.store.archive.encryption import AwsKmsClient, KeyringKmsClient, ParquetCrypto
from tests.aws.conftest import MotoServer
from tests.store.archive.conftest import DEMOGRAPHICS, PATIENT, T0, batch, reading

IDENTIFIERS = [PATIENT, "mon-41", *(v for k, v in DEMOGRAPHICS.items() if k != "gender")]


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class WriteEndpoint:
    """Stands in for s3-object-lambda's WriteGetObjectResponse, which moto lacks."""

    url: str = ""
    requests: list[Received] = field(default_factory=list)


@pytest.fixture
def write_endpoint(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteEndpoint]:
    endpoint = WriteEndpoint()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            assert self.path == "/WriteGetObjectResponse"
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            endpoint.requests.append(Received(headers, body))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint.url)
    yield endpoint
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def s3(aws: MotoServer) -> Any:
    # The test's own client talks to moto; the handler's goes to the write endpoint.
    return boto3.client("s3", endpoint_url=aws.url)


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"hs-archive-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def research(aws: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Deidentifier:
    """The research keys of a keyring, in a secret the function is configured with."""
    deidentifier = Deidentifier.from_keyring(Keyring.generate())
    name = f"healthsync/research-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager").create_secret(
        Name=name, SecretString=object_lambda.research_secret(deidentifier)
    )
    monkeypatch.setenv(object_lambda.SECRET_ENV, name)
    return deidentifier


def admitted() -> list[Reading]:
    first = replace(
        reading(PATIENT, "mon-41", 0, T0, heart_rate=128, spo2=86, temp=38.73),
        patient=DEMOGRAPHICS,
    )
    return [first, *batch(T0 + 60, 10)]


def get(
    s3: Any, bucket: str, key: str, endpoint: WriteEndpoint, content: bytes | None = None
) -> Received:
    """GetObject through the Object Lambda: what the reader would receive."""
    if content is not None:
        s3.put_object(Bucket=bucket, Key=key, Body=content)
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key})
    route = f"io-{uuid.uuid4().hex[:12]}"
    event = {
        "xAmzRequestId": uuid.uuid4().hex,
        "getObjectContext": {"inputS3Url": url, "outputRoute": route, "outputToken": "t0k"},
        "userRequest": {"url": f"https://olap-1.s3-object-lambda.us-east-1.amazonaws.com/{key}"},
    }
    answer = object_lambda.handler(event, None)
    [received] = endpoint.requests[-1:]
    assert received.headers["x-amz-request-route"] == route
    assert received.headers["x-amz-request-token"] == "t0k"
    assert answer == {"status_code": int(received.headers["x-amz-fwd-status"])}
    return received


def parquet(table: pa.Table, encryption: Any = None) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, encryption_properties=encryption)
    return bytes(sink.getvalue())


def assert_no_identifier(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    assert [i for i in IDENTIFIERS if i in text] == []


def test_a_parquet_export_comes_out_as_the_research_set(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier
) -> None:
    table = readings_table(admitted())
    received = get(s3, bucket, "exports/ward-7.parquet", write_endpoint, parquet(table))
    assert received.headers["x-amz-fwd-status"] == "200"
    assert received.headers["x-amz-fwd-header-content-type"] == "application/vnd.apache.parquet"
    served = pq.read_table(pa.BufferReader(received.body))
    assert served.equals(research.table(table))
    assert_no_identifier(received.body)
    assert_no_identifier(repr(served.to_pydict()).encode())
    [with_age] = [row for row in served.to_pylist() if row["age"] is not None]
    assert with_age["patient"] == research.pseudonym("patient", PATIENT)
    assert (with_age["age"], with_age["birth_year"]) == ("90+", None)
    assert "patient_name" not in served.column_names and "mrn" not in served.column_names


def test_json_lines_of_readings_lose_their_identifiers_and_keep_their_vitals(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier
) -> None:
    readings = admitted()
    lines = b"".join(r.to_json() + b"\n" for r in readings)
    received = get(s3, bucket, "exports/vitals.jsonl", write_endpoint, lines)
    assert received.headers["x-amz-fwd-status"] == "200"
    assert received.headers["x-amz-fwd-header-content-type"] == "application/x-ndjson"
    assert_no_identifier(received.body)
    served = [orjson.loads(line) for line in received.body.splitlines()]
    expected = research.table(readings_table(readings)).to_pylist()
    assert len(served) == len(expected) == len(readings)
    for got, want in zip(served, expected, strict=True):
        want = orjson.loads(orjson.dumps(want, option=orjson.OPT_UTC_Z))
        assert got == {name: want[name] for name in got}
    assert {"patient", "device", "ts", "heart_rate", "age"} <= set(served[0])
    assert not {"patient_id", "device_id", "reading_id", "seq", "ts_epoch"} & set(served[0])


def test_a_csv_export_is_served_as_the_same_csv_de_identified(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier
) -> None:
    table = readings_table(admitted())
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink)
    received = get(s3, bucket, "exports/ward-7.csv", write_endpoint, bytes(sink.getvalue()))
    assert received.headers["x-amz-fwd-status"] == "200"
    assert_no_identifier(received.body)
    expected = pa.BufferOutputStream()
    pacsv.write_csv(research.table(table), expected)

    def rows(data: bytes) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(data.decode())))

    assert rows(received.body) == rows(bytes(expected.getvalue()))


def test_an_identified_object_with_kms_wrapped_keys_is_decrypted_then_de_identified(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier
) -> None:
    key_id = boto3.client("kms").create_key()["KeyMetadata"]["KeyId"]
    crypto = ParquetCrypto(AwsKmsClient(boto3.client("kms")), key_id)
    table = readings_table(admitted())
    data = parquet(table, crypto.encryption_properties())
    key = "identified/readings/date=2026-11-28/hour=10/p0-0-20.parquet"
    received = get(s3, bucket, key, write_endpoint, data)
    assert received.headers["x-amz-fwd-status"] == "200"
    assert pq.read_table(pa.BufferReader(received.body)).equals(research.table(table))


def test_an_identified_object_the_function_cannot_decrypt_is_refused(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier
) -> None:
    ring = Keyring.generate()
    crypto = ParquetCrypto(KeyringKmsClient(ring), ring.active)
    data = parquet(readings_table(admitted()), crypto.encryption_properties())
    received = get(s3, bucket, "identified/readings/p0-0-20.parquet", write_endpoint, data)
    assert received.headers["x-amz-fwd-status"] == "403"
    assert received.headers["x-amz-fwd-error-code"] == "UndecryptableObject"
    assert received.body == b""


def test_a_missing_object_is_404_with_no_body(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier
) -> None:
    received = get(s3, bucket, "exports/none-such.parquet", write_endpoint)
    assert received.headers["x-amz-fwd-status"] == "404"
    assert received.headers["x-amz-fwd-error-code"] == "NoSuchKey"
    assert received.body == b""


class Recorder(logging.Handler):
    """Every record with its extra fields, as a JSON log line would carry them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.getMessage()} {record.__dict__}")


BAD_OBJECTS = {
    "exports/a.parquet": (b"PX-73910,Grace Hopper,MRN-558211", "422 UnreadableObject"),
    "exports/a.jsonl": (
        b'{"patient_id": "PX-73910", "patient_name": "Grace Hopper", "ts": "MRN-558211"}\n',
        "422 UnreadableObject",
    ),
    "exports/a.txt": (b"PX-73910 Grace Hopper MRN-558211", "415 UnsupportedObjectType"),
}


@pytest.mark.parametrize("key", sorted(BAD_OBJECTS))
def test_a_bad_object_is_refused_without_its_bytes_in_the_answer_or_the_logs(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, research: Deidentifier, key: str
) -> None:
    content, status = BAD_OBJECTS[key]
    recorder = Recorder()
    logging.getLogger("healthsync").addHandler(recorder)
    try:
        received = get(s3, bucket, key, write_endpoint, content)
    finally:
        logging.getLogger("healthsync").removeHandler(recorder)
    headers = received.headers
    assert f"{headers['x-amz-fwd-status']} {headers['x-amz-fwd-error-code']}" == status
    assert received.body == b""
    logged = " ".join(recorder.records)
    assert recorder.records and "X-Amz-Signature" not in logged
    assert_no_identifier((headers["x-amz-fwd-error-message"] + logged).encode())


def test_without_its_research_key_the_function_serves_nothing(
    s3: Any, bucket: str, write_endpoint: WriteEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"healthsync/broken-{uuid.uuid4().hex[:8]}"
    boto3.client("secretsmanager").create_secret(Name=name, SecretString='{"pseudonym_key": 1}')
    monkeypatch.setenv(object_lambda.SECRET_ENV, name)
    table = readings_table(admitted())
    received = get(s3, bucket, "exports/ward-7.parquet", write_endpoint, parquet(table))
    assert received.headers["x-amz-fwd-status"] == "500"
    assert received.headers["x-amz-fwd-error-code"] == "ResearchKeyUnavailable"
    assert received.body == b""


def test_the_research_key_command_writes_the_keys_the_archiver_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ring = Keyring.generate()
    ring.save(tmp_path / "keyring.json")
    monkeypatch.setenv("HEALTHSYNC_CRYPTO_KEYRING_FILE", str(tmp_path / "keyring.json"))
    monkeypatch.delenv("HEALTHSYNC_CRYPTO_KMS_KEY_ID", raising=False)
    output = tmp_path / "research-key.json"
    assert main(["aws", "research-key", "--output", str(output)]) == 0
    assert output.stat().st_mode & 0o777 == 0o600
    served = object_lambda.deidentifier_from_secret(output.read_text())
    assert served == Deidentifier.from_keyring(ring)
    assert served.pseudonym_key != ring.pseudonym_key


def test_the_lambda_zip_holds_the_function_and_the_layer_list_what_it_imports(
    tmp_path: Path,
) -> None:
    names = zipfile.ZipFile(package.build(tmp_path / "lambda.zip")).namelist()
    assert {"healthsync/aws/object_lambda.py", "healthsync/aws/redact.py"} <= set(names)
    code = (
        "import sys, healthsync.aws.object_lambda; "
        "print(sorted({m.split('.')[0] for m in sys.modules} - set(sys.stdlib_module_names)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    distributions = metadata.packages_distributions()
    imported = {d for top in ast.literal_eval(done.stdout) for d in distributions.get(top, [])}
    # The layer's distributions with what they require (pydantic-core, cffi, ...).
    layer, todo = set(), list(package.OBJECT_LAMBDA_LAYER)
    while todo:
        name = canonicalize_name(todo.pop())
        if name not in layer:
            layer.add(name)
            required = [Requirement(r) for r in metadata.requires(name) or []]
            todo += [r.name for r in required if not r.marker or r.marker.evaluate({"extra": ""})]
    runtime = {"healthsync", "boto3", "botocore", "setuptools"}
    assert {canonicalize_name(d) for d in imported} - runtime <= layer
