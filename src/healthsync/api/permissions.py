"""What each role and each SMART scope allows: one table, read by the routes and the docs.

A caller's token names roles (a JWT's ``roles`` claim, or an API key's role)
and/or SMART on FHIR scopes (``scope``). Both are turned into :class:`Grants`,
the only thing routes look at, so adding a role or a scope is a change to the
tables here, not to the routes.

Scopes narrow, they never widen (:func:`grants_for`): a user's token with
scopes gets what both its roles and its ``user/`` scopes allow; a token
without a user (no roles: a backend service) gets what its ``system/`` scopes
allow; a token with any ``patient/`` scope gets nothing, because the API has
no filter to the launch context's one patient.

Reads are per FHIR resource type, because that is how SMART scopes are
written (``user/Observation.read``); the v1 routes name the FHIR types their
answer is made of (the vitals are Observations, alerts are Communications and
Flags), so one scope means the same on both APIs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

ALL = "*"


@dataclass(frozen=True, slots=True)
class Grants:
    """What a caller may do."""

    # FHIR resource types the caller may read patient data of; "*" is every type.
    read: frozenset[str] = frozenset()
    # May acknowledge alerts.
    acknowledge: bool = False
    # May read the de-identified aggregates (/v1/summary) and the job runs (/v1/jobs).
    summary: bool = False
    # May start compute jobs (POST /v1/jobs/{name}/run).
    run_jobs: bool = False
    # May bind devices to the patients they send for (/v1/devices/{id}/patients).
    assign: bool = False

    def can_read(self, resource_type: str) -> bool:
        return ALL in self.read or resource_type in self.read

    def __or__(self, other: Grants) -> Grants:
        return Grants(
            read=self.read | other.read,
            acknowledge=self.acknowledge or other.acknowledge,
            summary=self.summary or other.summary,
            run_jobs=self.run_jobs or other.run_jobs,
            assign=self.assign or other.assign,
        )

    def __and__(self, other: Grants) -> Grants:
        if ALL in self.read:
            read = other.read
        elif ALL in other.read:
            read = self.read
        else:
            read = self.read & other.read
        return Grants(
            read=read,
            acknowledge=self.acknowledge and other.acknowledge,
            summary=self.summary and other.summary,
            run_jobs=self.run_jobs and other.run_jobs,
            assign=self.assign and other.assign,
        )


ROLES: dict[str, Grants] = {
    # Reads every patient's data and acknowledges alerts.
    "clinician": Grants(read=frozenset({ALL}), acknowledge=True, summary=True),
    # De-identified aggregates only: counts, never an id or a value of one patient.
    "viewer": Grants(summary=True),
    # Devices (FHIR Device resources) and the aggregates; no patient data.
    # Binding devices to patients too (which patients, never their data).
    "device-admin": Grants(read=frozenset({"Device"}), summary=True, assign=True),
    # Everything the API offers.
    "admin": Grants(
        read=frozenset({ALL}), acknowledge=True, summary=True, run_jobs=True, assign=True
    ),
}

# Acknowledging an alert changes its Communication and Flag; a write scope on either grants it.
_ACK_TYPES = frozenset({ALL, "Communication", "Flag"})

# SMART App Launch scopes, v1 (`.read`, `.write`, `.*`) and v2 (`.cruds` letters).
_SCOPE = re.compile(r"(?P<context>patient|user|system)/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<perm>\S+)")
_V2_PERMS = re.compile(r"c?r?u?d?s?")


def scope_grants(scope: str) -> Grants:
    """The grants of one SMART scope, before :func:`grants_for` narrows a role by it.

    - ``user/T.read``, ``system/T.read`` (and v2 ``.r``/``.s``/``.rs``): read type T
      (``*`` = every type); any read also allows the aggregates.
    - ``user/T.write`` (v2 ``.c``/``.u``) with T one of *, Communication, Flag: acknowledge alerts.
    - ``patient/...`` and scopes this server does not know grant nothing.
    """
    match = _SCOPE.fullmatch(scope)
    if match is None or match["context"] == "patient":
        return Grants()
    perm, resource_type = match["perm"], match["type"]
    if perm in ("read", "write", "*"):
        reads = perm in ("read", "*")
        writes = perm in ("write", "*")
    elif perm and _V2_PERMS.fullmatch(perm):
        reads = "r" in perm or "s" in perm
        writes = "c" in perm or "u" in perm
    else:
        return Grants()
    return Grants(
        read=frozenset({resource_type}) if reads else frozenset(),
        acknowledge=writes and resource_type in _ACK_TYPES,
        summary=reads,
    )


def grants_for(roles: Iterable[str], scopes: Iterable[str]) -> Grants:
    """What a token with these roles (unknown ones ignored) and SMART scopes may do.

    Without SMART resource scopes (``openid profile`` and the like are not),
    the union of the roles. With them, they narrow:

    - any ``patient/`` scope: nothing (launch-context filtering does not exist yet);
    - with roles (a user's token): the roles' grants limited to its ``user/`` scopes;
    - without roles (no user): its ``system/`` scopes.
    """
    scopes = tuple(s for s in scopes if _SCOPE.fullmatch(s))
    role_grants = Grants()
    has_role = False
    for role in roles:
        has_role = True
        role_grants |= ROLES.get(role, Grants())
    if not scopes:
        return role_grants
    contexts = [scope.split("/", 1)[0] for scope in scopes]
    if "patient" in contexts:
        return Grants()
    wanted = "user" if has_role else "system"
    scoped = Grants()
    for scope, context in zip(scopes, contexts, strict=True):
        if context == wanted:
            scoped |= scope_grants(scope)
    return role_grants & scoped if has_role else scoped
