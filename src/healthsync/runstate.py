"""What a running `healthsync up` tells other commands: its processes and where Redis is.

The supervisor rewrites `<run dir>/state.json` every second; `healthsync status`
reads it. It holds process ids, names and addresses, nothing about patients. And
`<run dir>/up.lock` says the directory is in use (:func:`hold_run_dir`).
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from healthsync.errors import ConfigError

FILE_NAME = "state.json"


@dataclass(frozen=True)
class ProcessEntry:
    """One supervised process: a stage (`healthsync <stage>`) or an embedded service."""

    name: str
    pid: int
    kind: Literal["stage", "service"]
    restarts: int = 0


@dataclass(frozen=True)
class RunState:
    up_pid: int
    redis_url: str
    redis_prefix: str
    redis_ca: str | None = None
    # The supervisor's own client certificate, which the embedded Redis requires with TLS.
    redis_cert: str | None = None
    redis_key: str | None = None
    processes: list[ProcessEntry] = field(default_factory=list)
    # HAProxy's stats as CSV (loopback), when ingest replicas run behind it.
    front_stats_url: str | None = None

    def save(self, run_dir: Path) -> None:
        """Write atomically (rename), readable by the owner only."""
        path = run_dir / FILE_NAME
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir: Path) -> RunState:
        """The state `up` last wrote; FileNotFoundError if it never ran there."""
        raw: dict[str, Any] = json.loads((run_dir / FILE_NAME).read_text(encoding="utf-8"))
        processes = [ProcessEntry(**entry) for entry in raw.pop("processes", [])]
        return cls(**raw, processes=processes)


def hold_run_dir(run_dir: Path) -> IO[str]:
    """Lock the run directory for one pipeline until the returned file is closed, or raise
    ConfigError: a second `up` there would start its own Redis on the first's data
    directory and rewrite its Redis password and HAProxy files."""
    handle = (run_dir / "up.lock").open("a", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(
            f"{run_dir} is in use by another `healthsync up`: stop that one, or give this "
            "one another --run-dir"
        ) from None
    return handle
