"""The hot-path modules compiled to C with mypyc, and the check that they match their sources.

The anomaly engine, the wire parser and the processor's per-reading work
(readings, their Bundles, the Redis sinks, the seals) run for every
reading, and on the 2-core machine every stage shares (ingest, processors,
broker, Redis) CPU is what limits the rate. mypyc compiles these fully typed
modules, unchanged, to C extensions: the engine and NEWS2 take 18.6 us of CPU
per reading instead of 31.4 (``bench/engine.py --patients 50 --readings
40000``), a line is parsed in 12.5 us instead of 16.8. The alarm tables of
``healthsync eval`` are the same, figure for figure, compiled or not.

``make install`` builds them into the source tree (``python -m
healthsync.compiled``): each module's extension sits beside its ``.py`` and is
imported instead of it. A source edited after that would silently not run, so
:func:`check` (called by the command line and the test session) refuses to
start while a listed module, or a package module it imports, is newer than
the extensions; ``make install`` (or
``python -m healthsync.compiled``) builds again, and ``--clean`` removes the
extensions, after which everything runs as plain Python, with the same
results, more slowly. An installed package without extensions is plain Python
too.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from healthsync.errors import ConfigError

# Not security.compression: its per-thread compressors are a threading.local subclass,
# which mypyc compiles into a class that crashed the interpreter when the garbage
# collector's objects were walked (tests/test_compiled.py); it is C calls in the main.
# Not store.records: a plain Python class cannot inherit from a compiled one, and tests
# subclass Records to count what a search decrypts.
MODULES = (
    "healthsync.domain.hmac_sha256",
    "healthsync.domain.news2",
    "healthsync.domain.readings",
    "healthsync.fhir.bundle_json",
    "healthsync.fhir.observations",
    "healthsync.security.codec",
    "healthsync.security.crypto",
    "healthsync.store.fhir_store",
    "healthsync.store.live",
    "healthsync.stream.clock",
    "healthsync.stream.devices",
    "healthsync.stream.engine",
    "healthsync.stream.level_rule",
    "healthsync.stream.lifecycle",
    "healthsync.stream.news2",
    "healthsync.stream.news2_alerts",
    "healthsync.stream.screening",
    "healthsync.stream.signal_quality",
    "healthsync.stream.state",
    "healthsync.stream.threshold_rule",
    "healthsync.stream.topics",
    "healthsync.stream.trends",
    "healthsync.wire.parse",
    "healthsync.wire.tokens",
    "healthsync.wire.values",
)

_SRC = Path(__file__).resolve().parents[1]  # the directory that holds the package
_SUFFIX = EXTENSION_SUFFIXES[0]  # this interpreter's, e.g. .cpython-311-x86_64-linux-gnu.so
# The modules a build was made from (see _dependencies), one per line: stat, not parsed,
# each time the command starts.
_MANIFEST = _SRC / ".healthsync-compiled"


def _source(module: str) -> Path:
    return _SRC.joinpath(*module.split(".")).with_suffix(".py")


def _extension(module: str) -> Path:
    source = _source(module)
    return source.with_name(source.stem + _SUFFIX)


def built() -> list[str]:
    """The modules whose extension this interpreter would import."""
    return [m for m in MODULES if _extension(m).exists()]


def _file(module: str) -> Path | None:
    """The source of a package module, or of a package (its __init__), if there is one."""
    for path in (_source(module), _SRC.joinpath(*module.split("."), "__init__.py")):
        if path.exists():
            return path
    return None


def _dependencies() -> dict[str, Path]:
    """The listed modules and every package module they import, directly or not.

    mypyc builds each listed module against what it imports: it copies a Final
    literal of another module into the compiled code, for one, so an edit there
    does not run either until the next build.
    """
    found: dict[str, Path] = {}
    todo = list(MODULES)
    while todo:
        module = todo.pop()
        path = _file(module)
        if module in found or path is None:
            continue
        found[module] = path
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            todo += [n for n in names if n.startswith("healthsync.")]
    return found


def _recorded() -> dict[str, Path]:
    """What the build recorded of :func:`_dependencies` (found again, more slowly, if lost)."""
    try:
        lines = _MANIFEST.read_text(encoding="utf-8").split()
    except OSError:
        return _dependencies()
    return {m: p for m in lines if (p := _file(m)) is not None}


def stale() -> list[str]:
    """The modules edited since the extensions were built: listed ones, or ones they import."""
    extensions = [_extension(m) for m in built()]
    if not extensions:
        return []
    built_at = min(e.stat().st_mtime for e in extensions)
    return sorted(m for m, path in _recorded().items() if path.stat().st_mtime > built_at)


def strays() -> list[Path]:
    """Extensions of modules no longer listed (an earlier build's): they would still run."""
    listed = {_extension(m) for m in MODULES}
    return sorted(p for p in (_SRC / "healthsync").rglob(f"*{_SUFFIX}") if p not in listed)


def check() -> None:
    """ConfigError if a compiled module would run code older than its source, or
    an extension of a module that is no longer compiled would run at all."""
    mend = (
        "build again with `make install` (or `python -m healthsync.compiled`), or remove "
        "the compiled modules with `python -m healthsync.compiled --clean`"
    )
    late = stale()
    if late:
        raise ConfigError(
            f"{', '.join(late)} changed after the compiled modules were built, and the old "
            "code would run; " + mend
        )
    left = strays()
    if left:
        names = ", ".join(str(p.relative_to(_SRC)) for p in left)
        raise ConfigError(f"{names} left from an earlier build would run; " + mend)


def clean() -> None:
    for module in MODULES:
        _extension(module).unlink(missing_ok=True)
    for stray in strays():
        stray.unlink()
    for shared in _SRC.glob(f"*__mypyc{_SUFFIX}"):  # the runtime the extensions share
        shared.unlink()
    _MANIFEST.unlink(missing_ok=True)


def build() -> None:
    """Compile every module in MODULES (all of them: they share one runtime library)."""
    root = _SRC.parent
    if not (root / "pyproject.toml").exists():
        raise ConfigError(f"{_SRC} is not a source checkout: nothing to compile")
    mypyc = shutil.which("mypyc", path=str(Path(sys.executable).parent))
    if mypyc is None:
        raise ConfigError("mypyc not found beside this Python; install the dev extra")
    clean()
    sources = [str(_source(m).relative_to(root)) for m in MODULES]
    env = {**os.environ, "MYPYPATH": str(_SRC)}
    done = subprocess.run(
        [mypyc, *sources], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        clean()  # half a build would run some modules compiled against others' old code
        raise ConfigError(f"mypyc failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")
    missing = sorted(set(MODULES) - set(built()))
    if missing:
        clean()
        raise ConfigError(f"mypyc built no extension for {', '.join(missing)}")
    # A module's extension is a small shim into the shared runtime, and one whose C did
    # not change keeps its old time: dated now, each is newer than the source it holds.
    for module in MODULES:
        os.utime(_extension(module))
    _MANIFEST.write_text("".join(f"{m}\n" for m in sorted(_dependencies())), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m healthsync.compiled",
        description="Compile the hot-path modules with mypyc (when one of them, or a module "
        "they import, is newer than the build, or none is built), or remove the extensions.",
    )
    parser.add_argument("--clean", action="store_true", help="remove the compiled modules")
    parser.add_argument("--force", action="store_true", help="compile even if up to date")
    args = parser.parse_args(argv)
    try:
        if args.clean:
            clean()
            print("compiled modules removed; HealthSync runs as plain Python")
        elif args.force or stale() or strays() or len(built()) < len(MODULES):
            build()
            print(f"compiled {len(MODULES)} modules with mypyc")
    except ConfigError as exc:
        print(f"healthsync.compiled: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
