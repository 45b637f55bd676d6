"""A Sink that pushes the batch's FHIR resources to an EHR's FHIR server (optional, off by default).

`flush` sends FHIR `transaction` Bundles (:mod:`healthsync.fhir.ehr_bundle`: conditional
updates, and references that follow the ids the EHR assigns) to the configured base URL.

An EHR that refuses what a transaction holds (400, 409, 412, 413 or 422: a
resource its profiles do not accept, say) refuses the whole Bundle over one
resource. The Bundle is then split in halves until each refused resource is on
its own, and those are set aside (`refused`) with the EHR's reason; everything
else is delivered. So is a 404 once the EHR has accepted a transaction of this
sink (a conditional reference that found nothing, the base URL being right).
Other refusals (401, 403, 405, 415, and 404 before: the push's credentials,
base URL or format) would refuse every resource alike, so they raise, and the
push waits for someone to fix it.

The push commits its offsets only after `flush`, which either delivers everything
it holds but what was set aside, or raises `EhrPushError`; resources that were
delivered before the error are simply found again on the retry.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from itertools import chain
from typing import Any

import httpx
import orjson

from healthsync.config import FhirSettings
from healthsync.domain.batch import Batch
from healthsync.errors import ConfigError
from healthsync.fhir.ehr_bundle import (
    WRITTEN_FIRST,
    EhrPushError,
    identifier_of,
    references,
    resource_key,
    transaction_bundle,
)
from healthsync.fhir.ehr_outcome import describe, outcome_text, scrubber
from healthsync.fhir.observations import unbundled
from healthsync.fhir.terminology import ResourceLoader

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
# 408 and 429 mean "not now"; any 5xx may be a restart or an overloaded server.
_RETRY_STATUSES = frozenset({408, 429})
# What the EHR refuses of a Bundle's content (413: too much of it), not of the request;
# and 404 too once the EHR accepted a transaction (the base URL is right): a conditional
# reference that found nothing.
_CONTENT_REFUSALS = frozenset({400, 409, 412, 413, 422})
# How many of those a sink keeps before it starts afresh (then it asks the store again).
_IDENTIFIERS_KEPT = 100_000


@dataclass(frozen=True)
class Refused:
    """A resource the EHR refused on its own, and why (diagnostics without patient data)."""

    resource: dict[str, Any]
    status: int | None
    reason: str


class _Retryable(Exception):
    """One attempt failed in a way that another attempt may not."""

    def __init__(self, reason: str, status: int | None = None, delay_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.delay_s = delay_s


def _retry_after(header: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not header:
        return None
    header = header.strip()
    if header.isdigit():
        return float(header)
    try:
        when = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class EhrPushSink:
    """Sends the batch's FHIR resources to an EHR as transaction Bundles.

    `write` only collects (a replayed batch replaces its own resources, it does
    not add them twice); `flush` sends them in Bundles of at most
    `ehr_batch_size` entries. Each Bundle is tried up to `ehr_max_attempts`
    times on transport errors, timeouts, 408, 429 and 5xx, waiting an
    exponential backoff with jitter (`backoff_base_s` doubling up to
    `backoff_max_s`) or what Retry-After asks (capped at `backoff_max_s`).
    A Bundle whose content the EHR refuses is split until the resources it refuses
    are found; those are set aside in `refused`, which the caller takes. Any other
    4xx raises at once: sending the same Bundle again cannot help.
    """

    def __init__(
        self,
        settings: FhirSettings,
        *,
        load: ResourceLoader | None = None,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if not settings.ehr_base_url:
            raise ConfigError("the EHR push needs a FHIR base URL (HEALTHSYNC_FHIR_EHR_BASE_URL)")
        self.settings = settings
        self.url = settings.ehr_base_url.rstrip("/")
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self._client = httpx.Client(
            timeout=settings.ehr_timeout_s,
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, **settings.ehr_headers},
        )
        # Keyed by type/id, in arrival order: a rewritten batch replaces its resources.
        self._pending: dict[str, dict[str, Any]] = {}
        self.refused: list[Refused] = []
        self._accepted = False  # whether the EHR accepted a transaction of this sink yet
        # Reads the stored Patients and Devices whose identifiers references need.
        self.load = load
        self._identifiers: dict[str, tuple[str, str]] = {}

    def write(self, batch: Batch) -> None:
        bundles = (orjson.loads(bundle.json) for bundle in batch.bundles)
        self.add(unbundled(chain((r for _key, r in batch.resources), bundles)))

    def add(self, resources: Iterable[dict[str, Any]]) -> None:
        """Queue resources for the next flush."""
        for resource in resources:
            self._pending[resource_key(resource)] = resource

    def flush(self) -> None:
        if not self._pending:
            return
        size = self.settings.ehr_batch_size
        created = existing = bundles = 0
        # Patients and Devices first: what else this flush holds may refer to them.
        order = sorted(self._pending, key=lambda k: k.partition("/")[0] not in WRITTEN_FIRST)
        self._pending = {k: self._pending[k] for k in order}
        self._learn_targets(self._pending.values())
        while self._pending:
            keys = list(self._pending)[:size]
            c, e, b = self._deliver([self._pending[k] for k in keys])
            for key in keys:
                del self._pending[key]
            created, existing, bundles = created + c, existing + e, bundles + b
        log.info(
            "pushed resources to the EHR",
            extra={
                "bundles": bundles,
                "resources_created": created,
                "resources_existing": existing,
                "resources_refused": len(self.refused),
            },
        )

    def _learn_targets(self, resources: Iterable[dict[str, Any]]) -> None:
        """The identifiers of the Patients and Devices `resources` refer to: from those
        among them, else as stored (`load`), for their conditional references."""
        known = self._identifiers
        if len(known) > _IDENTIFIERS_KEPT:
            known.clear()
        resources = list(resources)
        for resource in resources:
            rtype, rid = resource.get("resourceType"), resource.get("id")
            if rtype in WRITTEN_FIRST and rid and (found := identifier_of(resource)):
                known[f"{rtype}/{rid}"] = found
        wanted: dict[str, set[str]] = {}
        for ref in (ref for resource in resources for ref in references(resource)):
            rtype, _, rid = ref.partition("/")
            if rtype in WRITTEN_FIRST and rid and ref not in known:
                wanted.setdefault(rtype, set()).add(rid)
        if self.load is None:
            return
        for rtype, ids in wanted.items():
            for rid, stored in self.load(rtype, sorted(ids)).items():
                if found := identifier_of(stored):
                    known[f"{rtype}/{rid}"] = found

    def _refuses_content(self, status: int | None) -> bool:
        return status in _CONTENT_REFUSALS or (status == 404 and self._accepted)

    def take_refused(self) -> list[Refused]:
        """The resources set aside since the last call."""
        refused, self.refused = self.refused, []
        return refused

    def _deliver(self, resources: list[dict[str, Any]]) -> tuple[int, int, int]:
        """Send `resources`, split while the EHR refuses their content; the (created,
        existing) counts and the Bundles sent."""
        try:
            return (*self._send(transaction_bundle(resources, self._identifiers)), 1)
        except EhrPushError as exc:
            if not self._refuses_content(exc.status):
                raise
            if len(resources) == 1:
                [resource] = resources
                self.refused.append(Refused(resource, exc.status, str(exc)))
                log.warning(
                    "the EHR refused a resource; set aside",
                    extra={"resource_type": resource.get("resourceType"), "error": str(exc)},
                )
                return 0, 0, 1
        half = len(resources) // 2
        c1, e1, b1 = self._deliver(resources[:half])
        c2, e2, b2 = self._deliver(resources[half:])
        return c1 + c2, e1 + e2, b1 + b2

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EhrPushSink:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, bundle: dict[str, Any]) -> tuple[int, int]:
        """POST one Bundle until the EHR accepts it; the (created, existing) entry counts."""
        attempts = self.settings.ehr_max_attempts
        attempt = 1
        while True:
            try:
                return self._attempt(bundle)
            except _Retryable as exc:
                if attempt >= attempts:
                    raise EhrPushError(
                        f"EHR push gave up after {attempts} attempts; last: {exc.reason}",
                        status=exc.status,
                        attempts=attempts,
                    ) from exc
                delay = self._delay(attempt, exc.delay_s)
                log.warning(
                    "EHR push failed; retrying",
                    extra={"error": exc.reason, "attempt": attempt, "backoff_s": round(delay, 3)},
                )
                time.sleep(delay)
            attempt += 1

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        ceiling = min(self.backoff_base_s * 2.0 ** (attempt - 1), self.backoff_max_s)
        # Half fixed, half random: clients that failed together do not retry together.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _attempt(self, bundle: dict[str, Any]) -> tuple[int, int]:
        try:
            response = self._client.post(self.url, content=orjson.dumps(bundle))
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if status in _RETRY_STATUSES or status >= 500:
            delay = _retry_after(response.headers.get("Retry-After"), time.time())
            raise _Retryable(describe(response, scrubber(bundle)), status, delay)
        if not 200 <= status < 300:
            described = describe(response, scrubber(bundle))
            raise EhrPushError(f"the EHR rejected a transaction: {described}", status)
        counts = _count_entries(response, len(bundle["entry"]), lambda: scrubber(bundle))
        self._accepted = True
        return counts


def _count_entries(
    response: httpx.Response, sent: int, scrubber: Callable[[], Callable[[str], str]]
) -> tuple[int, int]:
    """Check every entry of a transaction-response succeeded; (created, existing) counts."""
    try:
        reply = response.json()
    except ValueError as exc:
        raise EhrPushError("the EHR answered a transaction with something not JSON") from exc
    entries = reply.get("entry") if isinstance(reply, dict) else None
    if not isinstance(entries, list) or reply.get("type") != "transaction-response":
        raise EhrPushError("the EHR answered a transaction without a transaction-response Bundle")
    if len(entries) != sent:
        raise EhrPushError(f"the EHR answered {len(entries)} entries for {sent} sent")
    created = existing = 0
    for index, entry in enumerate(entries):
        result = (entry.get("response") or {}) if isinstance(entry, dict) else {}
        code = str(result.get("status", "")).split(" ", 1)[0]
        if code == "201":
            created += 1
        elif code.startswith("2"):
            existing += 1
        else:
            outcome = scrubber()(outcome_text(result.get("outcome")))
            raise EhrPushError(
                f"the EHR failed entry {index} of a transaction with status {code or '?'}"
                + (f": {outcome}" if outcome else ""),
                int(code) if code.isdigit() else None,
            )
    return created, existing
