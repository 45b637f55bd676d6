"""`healthsync fhir-validate`: check FHIR resources against R4B and the project's profiles."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from healthsync.commands.base import Subparsers


def cmd_fhir_validate(args: argparse.Namespace) -> int:
    """Validate FHIR resources (R4B models + the project's profile checks); 1 if any failed."""
    from healthsync.fhir.profiles import (
        FhirValidationError,
        read_resources,
        reference_of,
        validate,
    )

    failed = checked = 0
    for name in args.files or ["-"]:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
            resources = read_resources(text)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        for resource in resources:
            checked += 1
            try:
                validate(resource)
            except FhirValidationError as exc:
                failed += 1
                print(f"fail {exc.reference}")
                for problem in exc.problems:
                    print(f"  {problem}")
            else:
                print(f"ok {reference_of(resource)}")
    if not checked and not failed:
        print("no FHIR resources in the input", file=sys.stderr)
        return 1
    return 1 if failed else 0


def register(sub: Subparsers) -> None:
    fhir_validate = sub.add_parser(
        "fhir-validate",
        help="validate FHIR resources against R4B and the vital-signs profiles",
        description="Read FHIR resources as JSON (one object, an array, JSON lines, or a "
        "Bundle, whose entries are checked) and validate each with the fhir.resources R4B "
        "models and HealthSync's profile checks. Prints `ok Type/id` or the problems; "
        "exits 1 if any resource failed.",
    )
    fhir_validate.add_argument(
        "files", nargs="*", metavar="FILE", help="JSON files; - or none reads stdin"
    )
    fhir_validate.set_defaults(func=cmd_fhir_validate)
