"""`healthsync keys rewrap` and `keys retire` against the real pipeline's Redis.

Long-lived values (a patient's alarm bands, the audit stream, latest vitals)
sealed under an old key must survive that key's retirement: retire refuses
while Redis still holds them, rewrap seals them again under the active key.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import httpx
from redis import Redis

from healthsync.security.codec import Codec
from healthsync.security.crypto import key_id_of
from healthsync.security.keyring import Keyring
from healthsync.stack import Service
from healthsync.supervisor import Pipeline
from tests.conftest import Credentials, Device, make_settings, wait_for
from tests.test_cli import run_cli


def test_rewrap_lets_an_old_key_be_retired_without_losing_data(
    broker: Service,
    redis_server: Service,
    tmp_path: Path,
    private_keyring: Path,
    credentials: Credentials,
) -> None:
    keyring = private_keyring
    settings = make_settings(
        broker,
        redis_server,
        crypto={"keyring_file": str(keyring)},
        archive={"url": (tmp_path / "archive").as_uri()},
    )
    pipeline = Pipeline(settings, tmp_path)
    pipeline.start(stages=("ingest", "process", "api"))
    device = Device(settings.ingest.host, settings.ingest.port)
    base = f"http://127.0.0.1:{settings.api.port}"
    api = httpx.Client(base_url=base, timeout=10, headers=credentials.headers())
    client = Redis.from_url(str(settings.redis.url))
    # Inside the default critical limits (40..140), as a merged band must be.
    rules = {"bands": {"heart_rate": {"low": 45, "high": 95}}}
    try:
        assert device.send(b"device_id=mon-rw patient_id=P-RW hr=71").startswith("OK ")
        wait_for(lambda: api.get("/v1/patients/P-RW/vitals/latest").status_code == 200, what="P-RW")
        assert api.put("/v1/patients/P-RW/rules", json=rules).status_code == 200

        ring = Keyring.load(keyring)
        ring.rotate()
        ring.save(keyring)

        refused = run_cli(settings, "keys", "retire", "k1")
        assert refused.returncode == 2, refused.stderr
        assert "still seals" in refused.stderr and "keys rewrap" in refused.stderr
        assert "k1" in Keyring.load(keyring).keys, "nothing was retired"

        rewrapped = run_cli(settings, "keys", "rewrap")
        assert rewrapped.returncode == 0, rewrapped.stderr
        assert rewrapped.stdout.startswith("resealed "), rewrapped.stdout
        assert _key_ids(client, settings.redis.prefix) == {"k2"}

        retired = run_cli(settings, "keys", "retire", "k1")
        assert retired.returncode == 0, retired.stderr
        pipeline.children["api"].stop()
        pipeline.start_child("api")
        wait_for(lambda: _up(base), what="the restarted API")

        latest = api.get("/v1/patients/P-RW/vitals/latest")
        assert latest.json()["vitals"]["heart_rate"]["value"] == 71
        stored = api.get("/v1/patients/P-RW/rules").json()
        assert stored["source"] == "api" and stored["bands"]["heart_rate"]["high"] == 95
        codec = Codec.from_settings(settings)
        audit = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(codec.keys.audit))
        assert audit and all(
            codec.open(f[b"record"], codec.field(codec.keys.audit, "record")) for _i, f in audit
        )
    finally:
        client.close()
        api.close()
        device.close()
        pipeline.stop()


def _key_ids(client: Redis, prefix: str) -> set[str]:
    found: set[str] = set()
    for key in client.scan_iter(f"{prefix}:*"):
        kind = client.type(key)
        values: list[bytes] = []
        if kind == b"string":
            values = [cast("bytes", client.get(key))]
        elif kind == b"hash":
            values = list(cast("dict[bytes, bytes]", client.hgetall(key)).values())
        elif kind == b"zset":
            values = cast("list[bytes]", client.zrange(key, 0, -1))
        elif kind == b"stream":
            entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange(key))
            values = [v for _id, fields in entries for v in fields.values()]
        found |= {k for k in map(key_id_of, values) if k is not None}
    return found


def _up(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz").status_code == 200
    except httpx.HTTPError:
        return False
