"""The `healthsync eval` command: the table it prints, its JSON and --check, and its exit
status for a bad scenario file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from healthsync.evaluation.scenario import EPISODE_VITAL
from tests.eval_cases import TINY_TOML, write


def run_eval(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALTHSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "healthsync", "eval", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_eval_prints_the_table_for_a_scenario(tmp_path: Path) -> None:
    result = run_eval("--scenario", str(write(tmp_path, TINY_TOML)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "scenario tiny: 6 patients x 1.0 h, 5 s samples, seed 11, 6 episodes"
    )
    header = next(i for i, line in enumerate(lines) if line.startswith("detector"))
    assert lines[header].split() == [
        "detector",
        "detected",
        "sens",
        "sens>=60s",
        "median",
        "p90",
        "alerts",
        "false",
        "false/pt-h",
        "technical",
        "reduction",
    ]
    # "9 s" is one column: glue the unit on before splitting.
    engine, monitor, naive = (
        re.sub(r"(\d) s\b", r"\1s", lines[header + i]).split() for i in (1, 2, 3)
    )
    # Every episode here goes far past its limit: every detector catches all of them.
    assert naive[:4] == ["naive", "6/6", "100%", "100%"]
    assert monitor[:4] == ["monitor", "6/6", "100%", "100%"]
    assert engine[:4] == ["engine", "6/6", "100%", "100%"]
    # ... the engine within 15 s (median), with fewer false alerts than the monitor.
    assert int(engine[4].rstrip("s")) <= 15
    assert int(engine[7]) <= int(monitor[7])
    [by_kind] = [line for line in lines if line.startswith("engine by episode kind")]
    assert all(f" {kind} " in by_kind for kind in EPISODE_VITAL)
    # Its dropouts (60-120 s of a 5 s monitor) are each called offline, and no device
    # is while its readings arrive.
    [offline] = [line for line in lines if line.startswith("engine device offline")]
    found = re.search(r"dropouts detected (\d+)/(\d+) \(>= 60 s: (\d+)/(\d+)\)", offline)
    assert found is not None, offline
    detected, dropouts, long_detected, long_dropouts = map(int, found.groups())
    assert dropouts > 0
    assert (detected, long_detected) == (dropouts, long_dropouts)
    assert offline.endswith("raised while the devices were sending: 0")


def test_eval_check_fails_on_a_missed_target_and_json_says_which(tmp_path: Path) -> None:
    # Detecting an episode takes an alert, so no engine can also raise 100% fewer
    # alerts than the naive baseline: this target set always fails.
    impossible = TINY_TOML + "\n[targets]\nmin_alert_reduction = 1.0\n"
    path = write(tmp_path, impossible, "impossible.toml")
    result = run_eval("--scenario", str(path), "--json", "--check", "--seed", "5")
    assert result.returncode == 1, result.stderr
    [doc] = json.loads(result.stdout)
    assert (doc["scenario"], doc["seed"], doc["passed"]) == ("impossible", 5, False)
    assert doc["naive"]["episodes"] == 6
    assert doc["naive"]["missed"] == []
    assert doc["dropouts"]["detected"] == doc["dropouts"]["dropouts"] > 0
    assert {t["name"] for t in doc["targets"]} >= {"alerts >= 100% fewer than naive"}
    [median] = [t for t in doc["targets"] if t["name"].startswith("median delay")]
    assert median["actual"] == f"{doc['engine']['median_delay_s']:.1f} s", "to the tenth"


def test_eval_with_a_bad_file_exits_2_and_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, TINY_TOML.replace("patients = 6", "patients = -1"))
    result = run_eval("--scenario", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"healthsync: {path}: invalid scenario: patients:")


def test_eval_over_several_seeds_says_in_how_many_draws_each_target_was_met(
    tmp_path: Path,
) -> None:
    impossible = TINY_TOML + "\n[targets]\nmin_alert_reduction = 1.0\n"
    path = write(tmp_path, impossible, "impossible.toml")
    result = run_eval("--scenario", str(path), "--seed", "5", "--seed", "6", "--check")
    assert result.returncode == 1, result.stderr
    blocks = result.stdout.split("\n\n")
    assert [b.splitlines()[0].split(",")[2].strip() for b in blocks[:2]] == ["seed 5", "seed 6"]
    summary = blocks[2].splitlines()
    assert summary[0] == "impossible over seeds 5, 6:"
    # Each target as often as the two blocks above met it, with the seeds it was missed on.
    verdicts: dict[str, list[str]] = {}
    for block in blocks[:2]:
        for line in block.splitlines():
            if line.startswith("target "):
                verdict, _, rest = line.removeprefix("target ").partition(": ")
                verdicts.setdefault(rest.rsplit(" (", 1)[0], []).append(verdict)
    assert "  alerts >= 100% fewer than naive: met in 0/2 draws (missed on seeds 5, 6)" in summary
    for target, seen in verdicts.items():
        met = seen.count("PASS")
        assert any(s.startswith(f"  {target}: met in {met}/2 draws") for s in summary), target
    # The dropouts of both draws, summed from the lines of the two blocks.
    counts = [
        [int(n) for n in found.groups()]
        for block in blocks[:2]
        if (found := re.search(r"detected (\d+)/(\d+) \(>= 60 s: (\d+)/(\d+)\)", block))
    ]
    assert len(counts) == 2
    detected, dropouts, long_detected, long_dropouts = (sum(c) for c in zip(*counts, strict=True))
    assert summary[-1] == (
        "  engine device offline over the draws: dropouts detected"
        f" {detected}/{dropouts} (>= 60 s: {long_detected}/{long_dropouts}),"
        " raised while the devices were sending: 0"
    )
