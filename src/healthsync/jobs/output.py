"""Where a run's files go: ``<prefix>/jobs/<job>/<run id>/`` in the archive's store.

The store is a local directory (``file://path`` or a plain path) or an S3
prefix (``s3://bucket/prefix``; the endpoint from ``AWS_ENDPOINT_URL``). A run
writes its files, then :meth:`JobOutput.commit` removes what an earlier run
with the same id left and this one did not write: a rerun replaces its output,
and an interrupted run leaves the previous complete set plus new files, never
a mix it reports as done.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson

from healthsync.errors import ConfigError
from healthsync.security.codec import Codec


class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

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
    """An S3 prefix; server-side encryption with S3's keys unless a KMS key is given."""

    def __init__(self, bucket: str, prefix: str, client: Any, kms_key_id: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.kms_key_id = kms_key_id
        self.url = f"s3://{bucket}/{self.prefix}"

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes) -> None:
        extra: dict[str, str] = {"ServerSideEncryption": "AES256"}
        if self.kms_key_id:
            extra = {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **extra)

    def get(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
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


def open_store(url: str, region: str | None = None) -> ObjectStore:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.netloc + parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        try:
            import boto3
        except ImportError:
            raise ConfigError("an s3:// store needs boto3: pip install 'healthsync[aws]'") from None
        return S3Store(parsed.netloc, parsed.path, boto3.client("s3", region_name=region))
    raise ConfigError(f"unsupported store URL {url!r}: use file://PATH or s3://BUCKET/PREFIX")


class JobOutput:
    """The files of one run, under ``jobs/<job>/<run id>/`` of a store."""

    def __init__(self, store: ObjectStore, job: str, run_id: str) -> None:
        self.store = store
        self.prefix = f"jobs/{job}/{run_id}/"
        self.written: list[str] = []

    @property
    def location(self) -> str:
        return f"{self.store.url.rstrip('/')}/{self.prefix}"

    def write(self, name: str, data: bytes) -> None:
        key = self.prefix + name
        self.store.put(key, data)
        if key not in self.written:
            self.written.append(key)

    def write_json(self, name: str, doc: Any) -> None:
        self.write(name, orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))

    def place(self, name: str) -> str:
        """What a sealed file is bound to: its key, so a file moved elsewhere does not open."""
        return f"jobs:{self.prefix}{name}"

    def write_sealed(self, name: str, doc: Any, codec: Codec) -> None:
        """A file that names patients: JSON sealed with the codec (plain if crypto is off)."""
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        self.write(name, codec.seal(data, self.place(name)))

    def read_sealed(self, name: str, codec: Codec) -> Any:
        return orjson.loads(codec.open(self.store.get(self.prefix + name), self.place(name)))

    def commit(self) -> None:
        """Remove what an earlier run with this id wrote and this one did not."""
        for key in self.store.list(self.prefix):
            if key not in self.written:
                self.store.delete(key)
