"""Where a run's files go: ``<prefix>/jobs/<job>/<run id>/`` in the archive's store.

The stores (a local directory or an S3 prefix) are in
:mod:`healthsync.store.job_files`. A run
writes its files, then :meth:`JobOutput.commit` removes what an earlier run
with the same id left and this one did not write: a rerun replaces its output,
and an interrupted run leaves the previous complete set plus new files, never
a mix it reports as done.
"""

from __future__ import annotations

from typing import Any

import orjson

from healthsync.security.codec import Codec
from healthsync.store.job_files import (
    LocalStore,
    ObjectStore,
    S3Store,
    open_store,
    read_sealed,
    run_prefix,
    sealed_place,
)

__all__ = ["JobOutput", "LocalStore", "ObjectStore", "S3Store", "open_store"]


class JobOutput:
    """The files of one run, under ``jobs/<job>/<run id>/`` of a store."""

    def __init__(self, store: ObjectStore, job: str, run_id: str) -> None:
        self.store = store
        self.prefix = run_prefix(job, run_id)
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
        return sealed_place(self.prefix + name)

    def write_sealed(self, name: str, doc: Any, codec: Codec) -> None:
        """A file that names patients: JSON sealed with the codec (plain if crypto is off)."""
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        self.write(name, codec.seal(data, self.place(name)))

    def read_sealed(self, name: str, codec: Codec) -> Any:
        return read_sealed(self.store, self.prefix + name, codec)

    def commit(self) -> None:
        """Remove what an earlier run with this id wrote and this one did not."""
        for key in self.store.list(self.prefix):
            if key not in self.written:
                self.store.delete(key)
