"""What an EHR says when it refuses a transaction, with the patient data taken out.

An EHR may quote the offending resource back ("Patient P-1 not found"); its
diagnostics go to the log, to errors and to the dead-letter topic's reason,
none of which may carry PHI, so every identifier the Bundle sent is redacted.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import httpx

_DIAGNOSTICS_MAX = 500


def outcome_text(outcome: Any) -> str:
    """The diagnostics of an OperationOutcome, or '' if `outcome` is not one."""
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    parts = []
    for issue in outcome.get("issue") or []:
        if not isinstance(issue, dict):
            continue
        text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
        parts.append(f"{issue.get('severity', '?')} {issue.get('code', '?')}: {text}".strip())
    return "; ".join(parts)[:_DIAGNOSTICS_MAX]


def response_outcome(response: httpx.Response) -> str:
    try:
        return outcome_text(response.json())
    except ValueError:
        return ""


def describe(response: httpx.Response, scrub: Callable[[str], str]) -> str:
    text = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    outcome = scrub(response_outcome(response))
    return f"{text}: {outcome}" if outcome else text


# Elements whose values identify a patient, a device or a reading.
_IDENTIFYING = frozenset(
    {"id", "value", "reference", "fullUrl", "text", "family", "given", "birthDate", "line"}
    | {"city", "postalCode"}
)
_REDACTED = "[redacted]"
# A FHIR search value's escapes (\\ \| \, \$).
_UNESCAPE = re.compile(r"\\(.)")


def _collect_identifying(node: Any, key: str, found: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _collect_identifying(v, k, found)
    elif isinstance(node, list):
        for item in node:
            _collect_identifying(item, key, found)
    elif isinstance(node, str) and key in _IDENTIFYING and len(node) >= 3:
        found.add(node)
        if key == "reference" and "?" in node:
            # A conditional reference names its target only in its search URL
            # (`Patient?identifier=system|value`, escaped as fhir/ehr_bundle.py does).
            searched = unquote(node)
            found.add(searched)
            found.add(_UNESCAPE.sub(r"\1", searched.partition("|")[2]))
        elif key in ("reference", "fullUrl"):
            found.add(node.rsplit("/", 1)[-1].removeprefix("urn:uuid:"))
        # A vital-sign Observation's id and identifier start with its reading id.
        head = node.replace("/", "-").partition("-")[0]
        if key in ("id", "value") and len(head) >= 5:
            found.add(head)


def scrubber(bundle: dict[str, Any]) -> Callable[[str], str]:
    """Removes from an EHR's diagnostics every identifier the bundle sent.

    An EHR may quote the offending resource back ("Patient P-1 not found");
    diagnostics go to the log and to errors, which must not carry PHI.
    """
    found: set[str] = set()
    _collect_identifying(bundle.get("entry", []), "", found)
    # Longest first, so that an id is not left half-replaced by a shorter one inside it.
    secrets = sorted(found, key=len, reverse=True)

    def scrub(text: str) -> str:
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text

    return scrub
