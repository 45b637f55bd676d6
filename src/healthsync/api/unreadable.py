"""Counting stored values the API cannot open, which lists leave out instead of failing."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from healthsync.security.crypto import DecryptError

log = logging.getLogger(__name__)


def unreadable_counter(registry: CollectorRegistry) -> Callable[[DecryptError], None]:
    """A callback for LiveReader: counts (``healthsync_api_unreadable_total``) and logs."""
    counter = Counter(
        "healthsync_api_unreadable",
        "Stored values left out of an answer because they cannot be decrypted "
        "(a retired or missing key, or tampering); `healthsync keys rewrap` prevents them",
        registry=registry,
    )

    def report(error: DecryptError) -> None:
        counter.inc()
        # The reason names a key id at most: no patient data.
        log.warning("stored value left out: it cannot be decrypted", extra={"error": str(error)})

    return report
