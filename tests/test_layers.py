"""The layering in docs/DESIGN.md holds, and the check that keeps it would notice a breach."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(source: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the package under `source`, with the project's contracts."""
    script = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(script), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=source,
        env={"PYTHONPATH": str(source), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_package_keeps_its_layers() -> None:
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "healthsync", tmp_path / "healthsync")
    records = tmp_path / "healthsync" / "store" / "records.py"
    with records.open("a") as out:
        out.write("\nfrom healthsync.stream.engine import AnomalyEngine  # noqa: E402, F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "healthsync.store is not allowed to import healthsync.stream" in result.stdout


def test_an_import_cycle_inside_a_package_is_refused(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "src" / "healthsync", tmp_path / "healthsync")
    rulebook = tmp_path / "healthsync" / "stream" / "rulebook.py"
    with rulebook.open("a") as out:
        out.write("\nfrom healthsync.stream.engine import AnomalyEngine  # noqa: E402, F401\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1
    assert "No cycles are allowed in healthsync.stream" in result.stdout
