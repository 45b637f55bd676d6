"""Where archived objects live: a local directory or an S3 bucket, behind one interface.

The local store keeps exactly the key layout a bucket would have, so moving an
archive to S3 is a copy. Both write an object whole or not at all: the local
store through a temporary file, fsync and rename; S3 through one PutObject,
which never shows a partial object. ``put`` returns only once the object is
durable, which is what lets the archiver commit its offsets afterwards.
``create`` writes only where no object is (a hard link locally, a conditional
PutObject on S3), for a record the first of several writers sets.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import pyarrow as pa

from healthsync.config import ArchiveSettings
from healthsync.errors import ConfigError
from healthsync.store.archive.errors import ObjectStoreError


class ObjectStore(Protocol):
    """Objects by key (relative to the archive URL's prefix)."""

    def put(self, key: str, data: bytes) -> None:
        """Store `data` under `key`, replacing any object there; return once it is durable."""
        ...

    def create(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` unless an object is there; False (nothing written) if one is.

        Of writers racing to create one key exactly one succeeds, and the object
        is durable when it returns True.
        """
        ...

    def open(self, key: str) -> pa.NativeFile:
        """A random-access file over the object, for Parquet readers."""
        ...

    def read_tail(self, key: str, length: int) -> bytes:
        """The object's last `length` bytes (all of it if it is shorter)."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a key with no object is not an error."""
        ...

    def location(self, key: str) -> str:
        """The object's full URL, for error messages."""
        ...


class LocalStore:
    """A directory whose files are the objects, keyed by their path under it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ObjectStoreError(f"object key {key!r} leaves the archive directory")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            partial = self._durable_temporary(path, data)
            partial.replace(path)
            _sync_directory(path.parent)
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {self.location(key)}: {exc}") from exc

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        try:
            partial = self._durable_temporary(path, data)
            try:
                # A hard link, unlike a rename, fails if the name exists already.
                os.link(partial, path)
            except FileExistsError:
                return False
            finally:
                partial.unlink(missing_ok=True)
            _sync_directory(path.parent)
        except OSError as exc:
            raise ObjectStoreError(f"cannot write {self.location(key)}: {exc}") from exc
        return True

    @staticmethod
    def _durable_temporary(path: Path, data: bytes) -> Path:
        """`data` in a hidden file beside `path`, on disk: a write in progress lists as nothing."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        return partial

    def open(self, key: str) -> pa.NativeFile:
        try:
            return pa.memory_map(str(self._path(key)))
        except OSError as exc:
            raise ObjectStoreError(f"cannot open {self.location(key)}: {exc}") from exc

    def read_tail(self, key: str, length: int) -> bytes:
        try:
            with self._path(key).open("rb") as file:
                size = file.seek(0, os.SEEK_END)
                file.seek(max(0, size - length))
                return file.read()
        except OSError as exc:
            raise ObjectStoreError(f"cannot read {self.location(key)}: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        # A prefix ending in "/" is a directory; otherwise it also matches file names.
        directory, _, start = prefix.rpartition("/")
        base = self._path(directory) if directory else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            relative = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                if name.startswith("."):
                    continue  # a write in progress
                key = name if relative == "." else f"{relative}/{name}"
                if key.startswith(prefix):
                    keys.append(key)
            if dirpath == str(base) and start:
                dirnames[:] = [d for d in dirnames if d.startswith(start)]
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as exc:
            raise ObjectStoreError(f"cannot delete {self.location(key)}: {exc}") from exc

    def location(self, key: str) -> str:
        # Not Path.as_uri(): it would percent-encode the "=" of the Hive keys.
        return f"file://{(self.root / key).as_posix()}"


class S3Store:
    """A bucket and prefix; every PutObject asks for server-side encryption."""

    def __init__(self, bucket: str, prefix: str, client: Any, sse: dict[str, str]) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client
        self.sse = sse

    def put(self, key: str, data: bytes) -> None:
        self._call("PutObject", Key=self.prefix + key, Body=data, **self.sse)

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # A conditional write: S3 refuses it (412) if the key has an object.
            self.client.put_object(
                Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*", **self.sse
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
                return False
            raise ObjectStoreError(f"S3 PutObject {self.location(key)} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"S3 PutObject {self.location(key)} failed: {exc}") from exc
        return True

    def get(self, key: str) -> bytes:
        answer = self._call("GetObject", Key=self.prefix + key)
        body: bytes = answer["Body"].read()
        return body

    def open(self, key: str) -> pa.NativeFile:
        # Archive objects are one roll of one partition, small enough to fetch whole.
        return pa.BufferReader(self.get(key))

    def read_tail(self, key: str, length: int) -> bytes:
        # A suffix range: S3 sends the whole object when it is shorter.
        answer = self._call("GetObject", Key=self.prefix + key, Range=f"bytes=-{length}")
        body: bytes = answer["Body"].read()
        return body

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token: dict[str, str] = {}
        while True:
            answer = self._call("ListObjectsV2", Prefix=self.prefix + prefix, **token)
            keys += [item["Key"][len(self.prefix) :] for item in answer.get("Contents", [])]
            if not answer.get("IsTruncated"):
                return sorted(keys)
            token = {"ContinuationToken": answer["NextContinuationToken"]}

    def delete(self, key: str) -> None:
        self._call("DeleteObject", Key=self.prefix + key)

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _call(self, operation: str, **params: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        method = {
            "PutObject": self.client.put_object,
            "GetObject": self.client.get_object,
            "ListObjectsV2": self.client.list_objects_v2,
            "DeleteObject": self.client.delete_object,
        }[operation]
        try:
            return method(Bucket=self.bucket, **params)
        except (ClientError, BotoCoreError) as exc:
            where = f"s3://{self.bucket}/{params.get('Key', params.get('Prefix', ''))}"
            raise ObjectStoreError(f"S3 {operation} {where} failed: {exc}") from exc


def _sync_directory(directory: Path) -> None:
    """A rename or link is durable only once the directory entry is on disk too."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def open_store(settings: ArchiveSettings) -> ObjectStore:
    """The store the archive URL names: ``file://<dir>`` or ``s3://bucket/prefix``."""
    url = urlsplit(settings.url)
    if url.scheme == "file":
        return LocalStore(Path(url.netloc + url.path) if url.netloc else Path(url.path))
    if url.scheme == "s3" and url.netloc:
        return S3Store(url.netloc, url.path, _s3_client(settings), sse(settings))
    raise ConfigError(
        f"archive URL {settings.url!r} is neither file://<directory> nor s3://<bucket>/<prefix>"
    )


def sse(settings: ArchiveSettings) -> dict[str, str]:
    """The PutObject parameters of the server-side encryption `archive.sse` names."""
    if settings.sse == "aws:kms":
        key = {"SSEKMSKeyId": settings.sse_kms_key_id} if settings.sse_kms_key_id else {}
        return {"ServerSideEncryption": "aws:kms", **key}
    return {"ServerSideEncryption": "AES256"}


def _s3_client(settings: ArchiveSettings) -> Any:
    try:
        import boto3
    except ImportError:
        raise ConfigError("an s3:// archive needs boto3: pip install 'healthsync[aws]'") from None
    # Without an explicit endpoint boto3 reads AWS_ENDPOINT_URL(_S3) itself.
    return boto3.client("s3", region_name=settings.aws_region, endpoint_url=settings.s3_endpoint)
