"""Job runs' files in a store: ``<prefix>/jobs/<job>/<run id>/``, a local directory or S3.

The store is a local directory (``file://path`` or a plain path) or an S3
prefix (``s3://bucket/prefix``; the endpoint from ``AWS_ENDPOINT_URL``). Jobs
write through :class:`healthsync.jobs.output.JobOutput`; what reads a run's
files (the API's precomputed trends) uses the key and sealing rules here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson

from healthsync.config import Settings
from healthsync.errors import ConfigError
from healthsync.security.codec import Codec
from healthsync.store.archive.objects import sse


def run_prefix(job: str, run_id: str) -> str:
    return f"jobs/{job}/{run_id}/"


def sealed_place(key: str) -> str:
    """What a sealed file is bound to: its key, so a file moved elsewhere does not open."""
    return f"jobs:{key}"


def read_sealed(store: ObjectStore, key: str, codec: Codec) -> Any:
    """A sealed JSON file of a run (see JobOutput.write_sealed)."""
    return orjson.loads(codec.open(store.get(key), sealed_place(key)))


def missing(exc: Exception) -> bool:
    """Whether `exc` says the file is not there (a local store's or S3's way)."""
    if isinstance(exc, FileNotFoundError):
        return True
    code = getattr(exc, "response", {}).get("Error", {}).get("Code")
    return code in {"NoSuchKey", "404"}


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def read_head(self, key: str, length: int) -> bytes:
        """The file's first `length` bytes (all of it if it is shorter)."""
        ...

    def list(self, prefix: str) -> list[str]: ...

    def delete(self, key: str) -> None: ...


class LocalStore:
    """A directory with the bucket's key layout; files are replaced atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ConfigError(f"object key {key!r} leaves the store")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def read_head(self, key: str, length: int) -> bytes:
        with self._path(key).open("rb") as file:
            return file.read(length)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        root = self.root.resolve()
        return sorted(
            str(p.relative_to(root))
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


class S3Store:
    """An S3 prefix, written with the server-side encryption `sse` names (the PutObject
    parameters; S3's own keys, AES256, by default)."""

    def __init__(
        self, bucket: str, prefix: str, client: Any, sse: dict[str, str] | None = None
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.sse = sse or {"ServerSideEncryption": "AES256"}
        self.url = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **self.sse)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        return body

    def read_head(self, key: str, length: int) -> bytes:
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self._key(key), Range=f"bytes=0-{length - 1}"
            )
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") == "InvalidRange":
                return b""  # an empty object has no first byte to range over
            raise
        body: bytes = answer["Body"].read()
        return body

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        strip = len(self._key(""))
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def jobs_store(settings: Settings) -> ObjectStore:
    """Where the jobs' files go (`jobs.output_url`), encrypted as the archive is
    (`archive.sse`): on AWS they share its bucket, whose policy may refuse anything else."""
    return open_store(settings.jobs.output_url, settings.jobs.aws_region, sse(settings.archive))


def open_store(
    url: str, region: str | None = None, sse: dict[str, str] | None = None
) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.netloc + parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        try:
            import boto3
        except ImportError:
            raise ConfigError("an s3:// store needs boto3: pip install 'healthsync[aws]'") from None
        return S3Store(parsed.netloc, parsed.path, boto3.client("s3", region_name=region), sse)
    raise ConfigError(f"unsupported store URL {url!r}: use file://PATH or s3://BUCKET/PREFIX")
