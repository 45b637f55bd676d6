"""The hot-path modules run compiled, and never as code older than their sources."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import time
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from healthsync import compiled
from healthsync.errors import ConfigError


def test_every_hot_path_module_runs_compiled() -> None:
    # `make install` builds them; were one left out, the rate would drop unannounced.
    plain = [
        module
        for module in compiled.MODULES
        if not str(importlib.import_module(module).__file__).endswith(EXTENSION_SUFFIXES[0])
    ]
    assert plain == [], f"running as plain Python: {plain} (run `make install`)"


_WALK = """
import asyncio, gc
from healthsync.domain.batch import Batch
from healthsync.domain.rules import AnomalySettings
from healthsync.fhir.bundle_json import BundleEncoder
from healthsync.fhir.observations import ObservationBuilder
from healthsync.security.compression import compress_with_dictionary, expand
from healthsync.stream.engine import AnomalyEngine
from healthsync.wire.parse import parse_line

engine = AnomalyEngine(AnomalySettings())
encoder = BundleEncoder(ObservationBuilder())
for n in range(200):
    line = f"device_id=m{n % 7} patient_id=p{n % 5} seq={n} hr={70 + n % 9} spo2=97 bp=120/80"
    reading = parse_line(line.encode(), 1_767_225_600.0 + n, id_key=b"k" * 32)
    engine.process(Batch([reading]))
    bundle = encoder.encode(reading) or b""
    assert expand(compress_with_dictionary(bundle)) == bundle
walked = 0
for thing in gc.get_objects():
    isinstance(thing, asyncio.Future)
    getattr(thing, "_log_traceback", False)
    walked += 1
print("walked", walked)
"""


def test_the_garbage_collectors_objects_can_be_walked_after_the_compiled_code_ran() -> None:
    # A class mypyc compiled from a threading.local subclass (security.compression's
    # per-thread compressors) crashed the interpreter here with a segmentation fault: in
    # a child process, so that a crash fails this test rather than the session.
    done = subprocess.run(
        [sys.executable, "-c", _WALK], capture_output=True, text=True, timeout=120, check=False
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("walked ")


def _checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A source tree holding one listed module, importing an unlisted one, and the
    listed module's (stand-in) extension."""
    module = compiled.MODULES[0]
    src = tmp_path / "src"
    source = src.joinpath(*module.split(".")).with_suffix(".py")
    source.parent.mkdir(parents=True)
    source.write_text("from healthsync.limits import LIMIT\n")
    (src / "healthsync" / "limits.py").write_text("LIMIT: Final = 5\n")
    extension = source.with_name(source.stem + EXTENSION_SUFFIXES[0])
    extension.write_bytes(b"")
    for path in (source, src / "healthsync" / "limits.py"):
        os.utime(path, (1_000_000, 1_000_000))
    os.utime(extension, (1_000_100, 1_000_100))  # built after both
    monkeypatch.setattr(compiled, "_SRC", src)
    monkeypatch.setattr(compiled, "_MANIFEST", src / ".healthsync-compiled")
    return source, extension


def test_a_source_edited_after_its_build_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, extension = _checkout(tmp_path, monkeypatch)
    os.utime(source, (1_000_000, 1_000_000))
    os.utime(extension, (1_000_100, 1_000_100))
    compiled.check()  # built after the edit: fine

    os.utime(source, (1_000_200, 1_000_200))  # edited since
    with pytest.raises(ConfigError, match="changed after the compiled modules were built") as e:
        compiled.check()
    assert compiled.MODULES[0] in str(e.value)
    assert "make install" in str(e.value)


def test_a_module_the_compiled_code_imports_edited_after_the_build_stops_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # mypyc copies an imported Final literal into the compiled code: a new LIMIT would
    # not take effect until the next build.
    _checkout(tmp_path, monkeypatch)
    limits = tmp_path / "src" / "healthsync" / "limits.py"
    compiled.check()

    os.utime(limits, (1_000_200, 1_000_200))
    with pytest.raises(ConfigError, match=r"healthsync\.limits changed after the compiled"):
        compiled.check()


def test_clean_leaves_plain_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, extension = _checkout(tmp_path, monkeypatch)
    shared = compiled._SRC / f"0123abcd__mypyc{EXTENSION_SUFFIXES[0]}"
    shared.write_bytes(b"")
    compiled._MANIFEST.write_text("healthsync.limits\n")
    os.utime(source, (1_000_200, 1_000_200))
    os.utime(extension, (1_000_000, 1_000_000))

    compiled.clean()

    assert not extension.exists() and not shared.exists() and source.exists()
    assert not compiled._MANIFEST.exists()
    assert compiled.built() == []
    compiled.check()  # nothing compiled is nothing stale


def test_an_extension_of_a_module_no_longer_compiled_is_refused_and_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier build compiled a module since taken off the list: its old code would
    # still be imported instead of its source.
    _checkout(tmp_path, monkeypatch)
    stray = tmp_path / "src" / "healthsync" / "retired" / f"module{EXTENSION_SUFFIXES[0]}"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")

    with pytest.raises(ConfigError, match="left from an earlier build") as caught:
        compiled.check()
    assert "healthsync/retired/module" in str(caught.value)

    compiled.clean()
    assert not stray.exists()
    compiled.check()


def test_the_command_line_refuses_to_run_a_stale_module(tmp_path: Path) -> None:
    # A copy of the package with its extensions, one source then edited: the command
    # says which and how to mend it, and runs nothing.
    package = Path(compiled.__file__).parent
    src = tmp_path / "src"
    shutil.copytree(package, src / "healthsync")
    for shared in [*package.parent.glob(f"*__mypyc{EXTENSION_SUFFIXES[0]}"), compiled._MANIFEST]:
        shutil.copy2(shared, src)
    later = time.time() + 5
    os.utime(src / "healthsync" / "stream" / "engine.py", (later, later))

    done = subprocess.run(
        [sys.executable, "-m", "healthsync", "status"],
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2
    assert "healthsync.stream.engine changed after the compiled modules were built" in done.stderr
