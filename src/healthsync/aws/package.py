"""`healthsync aws package`: the Lambda deployment zip of the jobs launcher and the Object Lambda.

The zip holds the ``healthsync`` package and the pure-Python libraries the
launcher imports that the Lambda Python runtime lacks (redis-py; boto3 is part
of the runtime), copied from this environment, so building it needs no
network. The same zip is the code of the S3 Object Lambda
(:data:`OBJECT_LAMBDA_HANDLER`); the libraries it needs beyond that are
compiled for the Lambda platform, so they come in a layer built with pip
(:data:`OBJECT_LAMBDA_LAYER`, docs/DEPLOY-AWS.md) rather than from here.
Entries carry a fixed timestamp: the same sources give the same zip, and
CloudFormation sees no change when there is none.
"""

from __future__ import annotations

import zipfile
from importlib import metadata
from pathlib import Path

import healthsync
from healthsync.errors import ConfigError

HANDLER = "healthsync.aws.lambda_jobs.handler"
OBJECT_LAMBDA_HANDLER = "healthsync.aws.object_lambda.handler"
# What healthsync.aws.object_lambda imports beside the zip and the runtime's boto3.
OBJECT_LAMBDA_LAYER = (
    "pyarrow",
    "numpy",
    "orjson",
    "cryptography",
    "pydantic",
    "pydantic-settings",
)
VENDORED = ("redis",)
_EPOCH = (1980, 1, 1, 0, 0, 0)


def _entries() -> dict[str, Path]:
    entries: dict[str, Path] = {}
    root = Path(healthsync.__file__).parent
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            entries[f"healthsync/{path.relative_to(root).as_posix()}"] = path
    for dist in VENDORED:
        try:
            files = metadata.files(dist) or []
        except metadata.PackageNotFoundError:
            raise ConfigError(f"{dist} is not installed here; the Lambda zip needs it") from None
        for file in files:
            name = file.as_posix()
            if name.startswith(f"{dist}/") and name.endswith(".py"):
                entries[name] = Path(str(file.locate()))
    return entries


def build(output: Path) -> Path:
    """Write the zip to `output` and return it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path in sorted(_entries().items()):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return output
