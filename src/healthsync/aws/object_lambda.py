"""The S3 Object Lambda that serves archive objects de-identified.

Behind an Object Lambda Access Point (``deploy/aws/archive.yaml``), every
GetObject through that access point invokes ``handler``, which

1. fetches the object from the presigned ``getObjectContext.inputS3Url``;
2. reads it as Parquet, JSON lines or CSV (by the key's suffix: ``.parquet``,
   ``.jsonl``/``.ndjson``, ``.csv``; else by its Content-Type);
3. strips it with the archive's own de-identification
   (:mod:`healthsync.store.archive.deidentify`, HIPAA Safe Harbor) under the
   research keys, so what it serves matches the archiver's research set;
4. answers with ``WriteGetObjectResponse`` in the same format.

An identified-archive object (Parquet Modular Encryption, encrypted footer)
is decrypted when KMS wraps its data keys (``crypto.kms_key_id``, as the AWS
deployment sets it) and the function may ``kms:Decrypt`` with that key, then
de-identified like any other; a file whose keys the keyring wraps, or one
the function may not decrypt, is refused with 403 ``UndecryptableObject``.

The original bytes are never returned. Every failure is answered with an
error status and code and a fixed message, and logged by code only (no
key, no URL, no parser message: they may hold PHI or credentials):

| status | ErrorCode | when |
| --- | --- | --- |
| 400 | InvalidRequest | the event has no inputS3Url |
| 403 | AccessDenied | S3 refused the presigned fetch |
| 403 | UndecryptableObject | encrypted Parquet whose data key cannot be unwrapped here |
| 404 | NoSuchKey | no such object |
| 413 | ObjectTooLarge | larger than ``HEALTHSYNC_OBJECT_LAMBDA_MAX_BYTES`` |
| 415 | UnsupportedObjectType | neither Parquet, JSON lines nor CSV |
| 422 | UnreadableObject | not valid in its format |
| 500 | ResearchKeyUnavailable | the research key secret cannot be read or is invalid |
| 500 | InternalError | anything else |
| 502 | UpstreamError | the fetch failed otherwise |

Configuration, as Lambda functions have it, from the environment:
``HEALTHSYNC_RESEARCH_KEY_SECRET`` (required: the Secrets Manager secret
holding the research keys that ``healthsync aws research-key`` writes, read
at most every five minutes), ``HEALTHSYNC_OBJECT_LAMBDA_MAX_BYTES`` (largest
object, default 268435456 = 256 MiB) and
``HEALTHSYNC_OBJECT_LAMBDA_TIMEOUT_S`` (the fetch's timeout, default 60).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from healthsync.aws import redact
from healthsync.errors import HealthSyncError
from healthsync.store.archive.deidentify import Deidentifier
from healthsync.store.archive.encryption import AwsKmsClient, ParquetCrypto

log = logging.getLogger(__name__)
log.setLevel(logging.INFO)

SECRET_ENV = "HEALTHSYNC_RESEARCH_KEY_SECRET"  # noqa: S105 - a variable name, not a secret
MAX_BYTES_ENV = "HEALTHSYNC_OBJECT_LAMBDA_MAX_BYTES"
TIMEOUT_ENV = "HEALTHSYNC_OBJECT_LAMBDA_TIMEOUT_S"
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
KEY_CACHE_S = 300.0
_KEY_BYTES = 32


class ObjectLambdaError(HealthSyncError):
    """A request answered with an error status; the message is fixed text, never content."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def research_secret(deidentifier: Deidentifier) -> str:
    """The research keys as the secret the function reads (JSON, base64 keys)."""
    return json.dumps(
        {
            "version": 1,
            "pseudonym_key": base64.b64encode(deidentifier.pseudonym_key).decode(),
            "shift_key": base64.b64encode(deidentifier.shift_key).decode(),
        }
    )


def deidentifier_from_secret(text: str) -> Deidentifier:
    """Inverse of :func:`research_secret`."""
    try:
        doc = json.loads(text)
        keys = [
            base64.b64decode(doc[name], validate=True) for name in ("pseudonym_key", "shift_key")
        ]
    except (ValueError, KeyError, TypeError, binascii.Error):
        keys = []
    if len(keys) != 2 or any(len(key) != _KEY_BYTES for key in keys):
        raise ObjectLambdaError(
            500, "ResearchKeyUnavailable", "the research key secret is not valid"
        )
    return Deidentifier(keys[0], keys[1])


class ResearchKeys:
    """The research keys from Secrets Manager, kept for :data:`KEY_CACHE_S` between invocations."""

    def __init__(self) -> None:
        self._cached: dict[str, tuple[float, Deidentifier]] = {}

    def get(self, secret_id: str, secrets: Callable[[], Any]) -> Deidentifier:
        now = time.monotonic()
        cached = self._cached.get(secret_id)
        if cached is not None and now - cached[0] < KEY_CACHE_S:
            return cached[1]
        try:
            text = secrets().get_secret_value(SecretId=secret_id)["SecretString"]
        except Exception:  # noqa: BLE001 - denied, missing or unreachable: all are a 500
            raise ObjectLambdaError(
                500, "ResearchKeyUnavailable", "the research key secret cannot be read"
            ) from None
        deidentifier = deidentifier_from_secret(text)
        self._cached[secret_id] = (now, deidentifier)
        return deidentifier


# Lambda keeps a warm function's module state: the keys are fetched once per five minutes.
_KEYS = ResearchKeys()


def fetch(url: str, limit: int, timeout: float) -> tuple[bytes, str | None]:
    """The object's bytes and Content-Type from the presigned URL."""
    if urllib.parse.urlsplit(url).scheme not in ("https", "http"):
        raise ObjectLambdaError(400, "InvalidRequest", "the input URL is not http(s)")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 (checked above)
            data: bytes = answer.read(limit + 1)
            content_type = answer.headers.get("Content-Type")
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ObjectLambdaError(404, "NoSuchKey", "the object does not exist") from None
        if exc.code == 403:
            raise ObjectLambdaError(403, "AccessDenied", "S3 refused to read the object") from None
        raise ObjectLambdaError(
            502, "UpstreamError", f"S3 answered {exc.code} reading the object"
        ) from None
    except (urllib.error.URLError, OSError):
        raise ObjectLambdaError(502, "UpstreamError", "the object could not be fetched") from None
    if len(data) > limit:
        raise ObjectLambdaError(413, "ObjectTooLarge", f"the object is larger than {limit} bytes")
    return data, content_type


def object_key(event: Mapping[str, Any]) -> str:
    """The requested key: the path of the user's request (or of the input URL)."""
    for url in (event.get("userRequest", {}).get("url"), event["getObjectContext"]["inputS3Url"]):
        if isinstance(url, str) and url:
            return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    return ""


def transform(
    event: Mapping[str, Any],
    env: Mapping[str, str],
    secrets: Callable[[], Any],
    kms: Callable[[], Any],
) -> tuple[bytes, str]:
    """The de-identified body and its Content-Type, or :class:`ObjectLambdaError`."""
    url = event.get("getObjectContext", {}).get("inputS3Url")
    if not isinstance(url, str) or not url:
        raise ObjectLambdaError(400, "InvalidRequest", "the event has no inputS3Url")
    secret_id = env.get(SECRET_ENV)
    if not secret_id:
        raise ObjectLambdaError(500, "ResearchKeyUnavailable", f"{SECRET_ENV} is not set")
    try:
        limit = int(env.get(MAX_BYTES_ENV, DEFAULT_MAX_BYTES))
        timeout = float(env.get(TIMEOUT_ENV, "60"))
    except ValueError:
        raise ObjectLambdaError(500, "InternalError", "the function is misconfigured") from None
    deidentifier = _KEYS.get(secret_id, secrets)
    data, content_type = fetch(url, limit, timeout)
    fmt = redact.format_of(object_key(event), content_type)
    if fmt is None:
        raise ObjectLambdaError(
            415,
            "UnsupportedObjectType",
            "only Parquet, JSON lines and CSV objects are served, de-identified",
        )
    try:
        if fmt == redact.PARQUET and redact.is_encrypted_parquet(data):
            table = _decrypted(data, kms)
        else:
            table = redact.read(data, fmt)
        body = redact.deidentify(table, fmt, deidentifier)
    except redact.UnreadableObjectError as exc:
        raise ObjectLambdaError(422, "UnreadableObject", str(exc)) from None
    return body, redact.CONTENT_TYPES[fmt]


def _decrypted(data: bytes, kms: Callable[[], Any]) -> Any:
    # The master key id recorded in the file is what KMS is asked to decrypt with; a
    # keyring-wrapped file names a keyring key, which KMS does not know.
    crypto = ParquetCrypto(AwsKmsClient(kms()), master_key="")
    try:
        return redact.read(data, redact.PARQUET, crypto.decryption_properties())
    except Exception:  # noqa: BLE001 - KMS errors come through pyarrow in many shapes
        raise ObjectLambdaError(
            403,
            "UndecryptableObject",
            "the object is encrypted and its data key cannot be unwrapped with KMS here",
        ) from None


def s3_client(env: Mapping[str, str]) -> Any:
    """The S3 client for WriteGetObjectResponse."""
    import boto3
    from botocore.config import Config

    # On AWS botocore sends the response to {RequestRoute}.s3-object-lambda.<region>...,
    # putting the route in front of the endpoint's host. An endpoint given by
    # AWS_ENDPOINT_URL(_S3) (moto, LocalStack, a test's server on 127.0.0.1) has no such
    # names, so with one set the route travels only in its x-amz-request-route header.
    custom = bool(env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
    return boto3.client("s3", config=Config(inject_host_prefix=not custom))


def handler(event: Mapping[str, Any], context: Any = None) -> dict[str, int]:
    """The Lambda entry point: ``healthsync.aws.object_lambda.handler``."""
    import boto3

    context_ = event.get("getObjectContext") or {}
    route, token = context_.get("outputRoute"), context_.get("outputToken")
    request_id = event.get("xAmzRequestId")
    if not route or not token:
        # Without a route there is no one to answer: not an Object Lambda invocation.
        log.error("not an S3 Object Lambda event", extra={"request_id": request_id})
        return {"status_code": 400}
    s3 = s3_client(os.environ)
    try:
        body, content_type = transform(
            event, os.environ, lambda: boto3.client("secretsmanager"), lambda: boto3.client("kms")
        )
    except ObjectLambdaError as exc:
        status, code, message = exc.status, exc.code, exc.message
    except Exception as exc:  # noqa: BLE001 - every failure still gets an answer
        # The exception's text may quote the object: only its type is logged.
        log.error("object lambda failed: %s", type(exc).__name__, extra={"request_id": request_id})
        status, code, message = 500, "InternalError", "the object could not be de-identified"
    else:
        s3.write_get_object_response(
            RequestRoute=route,
            RequestToken=token,
            Body=body,
            StatusCode=200,
            ContentType=content_type,
        )
        log.info("object served de-identified", extra={"request_id": request_id})
        return {"status_code": 200}
    log.warning(
        "object refused: %s %s", status, code, extra={"request_id": request_id, "code": code}
    )
    s3.write_get_object_response(
        RequestRoute=route,
        RequestToken=token,
        StatusCode=status,
        ErrorCode=code,
        ErrorMessage=message,
    )
    return {"status_code": status}
