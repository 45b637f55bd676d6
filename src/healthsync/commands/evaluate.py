"""`healthsync eval`: alarm quality of the anomaly engine on labelled scenarios."""

from __future__ import annotations

import argparse
from pathlib import Path

from healthsync.commands.base import Subparsers, settings_from


def cmd_eval(args: argparse.Namespace) -> int:
    """Score the anomaly engine against a bedside monitor and a naive threshold on labelled
    scenarios."""
    import json

    from healthsync.evaluation.report import evaluate, render_draws, render_table, to_json
    from healthsync.evaluation.scenario import scenario_paths

    settings = settings_from(args)
    seeds: list[int | None] = args.seed or [None]
    results = [
        evaluate(path, settings, seed) for path in scenario_paths(args.scenario) for seed in seeds
    ]
    if args.json:
        print(json.dumps(to_json(results), indent=2))
    elif len(seeds) > 1:
        print(render_table(results) + "\n\n" + render_draws(results))
    else:
        print(render_table(results))
    return 1 if args.check and not all(r.passed for r in results) else 0


def register(sub: Subparsers) -> None:
    evaluate = sub.add_parser(
        "eval",
        help="measure alarm quality: the anomaly engine vs a bedside monitor and naive thresholds",
        description="Generate labelled scenarios (stable patients, deteriorations of known "
        "start and duration, artefacts), run the engine, a bedside monitor and a naive "
        "per-sample threshold over them, and print detected episodes, detection delay, "
        "false alerts per patient-hour and the reduction in alerts, and how the engine's "
        "device offline alerts match the dropouts. Scenario files default to the "
        "repository's scenarios/*.toml.",
    )
    evaluate.add_argument(
        "--scenario",
        type=Path,
        action="append",
        metavar="PATH",
        help="scenario TOML file or directory (repeatable; default: scenarios/*.toml)",
    )
    evaluate.add_argument(
        "--seed",
        type=int,
        action="append",
        help="use this seed instead of each file's (repeatable: each file is drawn once per "
        "seed, then in how many draws each target was met, and on which seeds it was missed)",
    )
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of a table")
    evaluate.add_argument(
        "--check", action="store_true", help="exit 1 if the engine misses a scenario's target"
    )
    evaluate.set_defaults(func=cmd_eval)
