"""One supervised stage: a `python -m healthsync <stage>` child process and its log."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from healthsync.stack import die_with_parent, stop_process


@dataclass
class Child:
    """One supervised `python -m healthsync <stage>` process."""

    name: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log_file: IO[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    # This child's own variables over the stages' common ones (kept for restarts).
    env: dict[str, str] = field(default_factory=dict)
    # time.monotonic() of its last start.
    started_at: float = 0.0
    # A consumer stage's `kafka.joined_file`: removed at each start, so that only the
    # running process's group membership shows in it.
    joined_file: Path | None = None

    @property
    def stage(self) -> str:
        """The command it runs (`ingest` for each of the replicas `ingest-1`, `ingest-2`)."""
        return self.argv[3] if len(self.argv) > 3 else self.name

    def start(self, env: dict[str, str]) -> None:
        self.started_at = time.monotonic()
        if self.joined_file is not None:
            self.joined_file.unlink(missing_ok=True)
        self.log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            env=env | self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # only a prctl() call: safe between fork and exec
            # Out of the terminal's process group: Ctrl-C reaches only `up`, which
            # stops the stages in order (devices first) instead of all at once.
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self) -> None:
        """SIGTERM without waiting: `stop` then waits for it to drain."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=15.0)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is drained."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
