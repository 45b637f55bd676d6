"""Which stages give way when the machine's CPU is short.

On one machine (`healthsync up`) the processor is the pipeline's narrowest
stage: ingest can acknowledge readings faster than the processor stores them,
and the archiver can fall behind, its backlog waiting in Kafka. Linux shares
the CPU evenly between sessions (autogroups), and `up` starts each stage in
a session of its own, so by default each ingest replica and the archiver got
as much CPU as the processor: with ingest flat out, the processor stored
1,600-2,000 readings/s. With ingest at nice 5 and the archiver at nice 10 it
stored about 4,000/s (`bench/pipeline.py`; docs/SCALE.md). Nothing changes on
an idle machine: nice only matters while stages compete.

A stage lowers its own priority (`nice`, 0-19, never raised) for itself and
the threads it starts afterwards, and, when it leads a session of its own
(as `up` starts it), for its autogroup. A stage started from a terminal shares
the terminal's session and leaves its autogroup alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_AUTOGROUP = Path("/proc/self/autogroup")


def give_way(nice: int) -> None:
    """Lower this process's CPU priority by `nice`; call before starting threads."""
    if nice <= 0:
        return
    try:
        os.nice(nice)
    except OSError as exc:
        log.warning("cannot lower the CPU priority", extra={"error": str(exc)})
        return
    if os.getsid(0) == os.getpid() and _AUTOGROUP.exists():
        try:
            _AUTOGROUP.write_text(f"{nice}\n")
        except OSError as exc:
            log.debug("autogroup unchanged", extra={"error": str(exc)})
