"""Seals counted per key across processes, and the active key rotated before its limit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.security.crypto import key_id_of
from healthsync.security.keyring import Keyring
from healthsync.security.rotation import seal_counts
from healthsync.stack import Service
from tests.api.auth_client import serving
from tests.conftest import Credentials, make_settings

LIMIT = 64


def settings_for(keyring: Path, limit: int = LIMIT) -> Settings:
    return Settings(crypto={"keyring_file": str(keyring), "rotate_after_seals": limit})


def test_sealing_past_the_limit_moves_to_a_new_key_and_everything_still_opens(
    private_keyring: Path,
) -> None:
    reader = Codec.from_settings(settings_for(private_keyring))  # e.g. the API, started first
    writer = Codec.from_settings(settings_for(private_keyring))
    first = Keyring.load(private_keyring).active
    sealed = [(f"p{n}", writer.seal(f"value {n}".encode(), f"p{n}")) for n in range(5 * LIMIT)]

    used = [key_id_of(value) for _, value in sealed]
    assert used[0] == first
    assert len(set(used)) >= 3, used  # rotated more than once, never back
    assert used == sorted(used, key=lambda k: int(str(k)[1:]))
    # The next seal uses the keyring file's active key: the writer made it.
    assert key_id_of(writer.seal(b"next", "p-next")) == Keyring.load(private_keyring).active
    # Nothing sealed under one key much past the limit (counted in batches).
    for key_id in set(used):
        assert used.count(key_id) <= LIMIT + LIMIT // 8
    # The counts persist beside the keyring, per key.
    counts = seal_counts(private_keyring)
    assert counts[first] >= LIMIT
    # Old and new values open: in the process that sealed them, in one that started
    # before the rotations, and in a new one.
    fresh = Codec.from_settings(settings_for(private_keyring))
    for codec in (writer, reader, fresh):
        for n, (place, value) in enumerate(sealed):
            assert codec.open(value, place) == f"value {n}".encode()


SEALER = textwrap.dedent(
    """
    import sys
    from healthsync.config import Settings
    from healthsync.security.codec import Codec

    keyring, tag = sys.argv[1], sys.argv[2]
    codec = Codec.from_settings(
        Settings(crypto={"keyring_file": keyring, "rotate_after_seals": 64})
    )
    for n in range(1000):
        print(codec.seal(f"{tag} {n}".encode(), f"{tag}:{n}").hex(), flush=True)
    """
)


def test_processes_sealing_under_one_keyring_rotate_to_the_same_keys(
    private_keyring: Path,
) -> None:
    """A processor, an ingest server and an archiver at once: no process forks the keyring."""
    tags = ("processor", "ingest", "archiver")
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", SEALER, str(private_keyring), tag],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in tags
    ]
    outputs = [worker.communicate(timeout=120) for worker in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    codec = Codec.from_settings(settings_for(private_keyring))
    key_ids: set[str | None] = set()
    for tag, (out, _) in zip(tags, outputs, strict=True):
        values = [bytes.fromhex(line) for line in out.splitlines()]
        assert len(values) == 1000
        for n, value in enumerate(values):
            key_ids.add(key_id_of(value))
            assert codec.open(value, f"{tag}:{n}") == f"{tag} {n}".encode()
    ring = Keyring.load(private_keyring)
    assert key_ids <= set(ring.keys) and len(key_ids) > 3
    total = sum(seal_counts(private_keyring).values())
    assert 3000 - 3 * (LIMIT // 8) <= total <= 3000


def test_metrics_show_the_seals_per_key(
    broker: Service, redis_server: Service, credentials: Credentials, private_keyring: Path
) -> None:
    settings = make_settings(
        broker,
        redis_server,
        crypto={"keyring_file": str(private_keyring), "rotate_after_seals": LIMIT},
    )
    codec = Codec.from_settings(settings)
    first = codec.cipher.keyring.active if codec.cipher else ""
    for n in range(2 * LIMIT):
        codec.seal(b"value", f"p{n}")
    with serving(settings, credentials, private_keyring.parent / "api") as api:
        lines = api.get("/metrics").text.splitlines()
    seals = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("healthsync_crypto_seals_total{")
    }
    assert seals[first] == LIMIT
    assert len(seals) >= 2 and sum(seals.values()) >= 2 * LIMIT
