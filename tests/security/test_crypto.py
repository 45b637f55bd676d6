"""Envelope encryption: keyring file safety, clear errors, rotation, retirement, KMS (moto)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from moto.server import ThreadedMotoServer

from healthsync.cli import main
from healthsync.config import Settings
from healthsync.security.codec import Codec
from healthsync.security.crypto import Cipher, DecryptError, key_id_of
from healthsync.security.keyring import Keyring, KeyringError
from healthsync.stack import free_port

PHI = b'{"patient_id": "P-1", "heart_rate": 71}'


def saved(tmp_path: Path, name: str = "keyring.json") -> Path:
    path = tmp_path / name
    Keyring.generate().save(path)
    return path


def test_keyring_file_is_private_and_a_readable_one_is_refused(tmp_path: Path) -> None:
    path = saved(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(KeyringError, match=r"accessible by group or others \(mode 0644\)"):
        Keyring.load(path)
    with pytest.raises(KeyringError, match="not found; create it with `healthsync keys init`"):
        Keyring.load(tmp_path / "missing.json")


def test_a_sealed_value_opens_only_with_its_key_place_and_bytes(tmp_path: Path) -> None:
    cipher = Cipher(Keyring.load(saved(tmp_path)))
    sealed = cipher.seal(PHI, b"hs:latest:x")
    assert b"P-1" not in sealed and b"71" not in sealed[4:]
    assert cipher.open(sealed, b"hs:latest:x") == PHI

    other = Cipher(Keyring.load(saved(tmp_path, "other.json")))  # also has a key "k1"
    with pytest.raises(DecryptError, match="authentication failed: wrong key or tampered data"):
        other.open(sealed, b"hs:latest:x")
    with pytest.raises(DecryptError, match="authentication failed"):
        cipher.open(sealed, b"hs:latest:y")  # moved to another patient's key
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(DecryptError, match="authentication failed"):
        cipher.open(tampered, b"hs:latest:x")
    with pytest.raises(DecryptError, match="not a HealthSync ciphertext"):
        cipher.open(PHI, b"hs:latest:x")


def test_pseudonyms_are_keyed_and_deterministic(tmp_path: Path) -> None:
    one = Cipher(Keyring.load(saved(tmp_path)))
    other = Cipher(Keyring.load(saved(tmp_path, "other.json")))
    assert one.pseudonym("P-1") == one.pseudonym("P-1") != one.pseudonym("P-2")
    assert one.pseudonym("P-1") != other.pseudonym("P-1")
    assert "P-1" not in one.pseudonym("P-1")


def test_rotation_keeps_old_data_readable_and_retiring_makes_it_unreadable(
    tmp_path: Path,
) -> None:
    path = saved(tmp_path)
    old = Cipher(Keyring.load(path)).seal(PHI, b"place")
    ring = Keyring.load(path)
    assert ring.rotate() == "k2"
    ring.save(path)

    rotated = Cipher(Keyring.load(path))
    new = rotated.seal(PHI, b"place")
    assert (key_id_of(old), key_id_of(new)) == ("k1", "k2")
    assert rotated.open(old, b"place") == rotated.open(new, b"place") == PHI
    assert rotated.pseudonym("P-1") == Cipher(ring).pseudonym("P-1"), "key names stay stable"

    ring = Keyring.load(path)
    with pytest.raises(KeyringError, match="'k2' is the active key; rotate before retiring it"):
        ring.retire("k2")
    ring.retire("k1")
    ring.save(path)
    assert "k1" not in json.loads(path.read_text())["keys"], "the key material is deleted"
    retired = Cipher(Keyring.load(path))
    assert retired.open(new, b"place") == PHI
    with pytest.raises(DecryptError, match="key 'k1' was retired; its data is no longer readable"):
        retired.open(old, b"place")
    unknown = old[:3] + b"k9" + old[5:]
    with pytest.raises(DecryptError, match="key 'k9' is not in the keyring"):
        retired.open(unknown, b"place")


def test_codec_with_encryption_off_refuses_sealed_values(tmp_path: Path) -> None:
    settings = Settings(crypto={"keyring_file": str(saved(tmp_path))})
    sealed = Codec.from_settings(settings).seal(PHI, "k")
    settings.crypto.enabled = False
    with pytest.raises(DecryptError, match=r"encrypted but crypto\.enabled is false"):
        Codec.from_settings(settings).open(sealed, "k")


def test_keys_command_creates_rotates_and_retires(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # retire first checks that Redis holds nothing the key sealed: this test's prefix is empty.
    monkeypatch.setenv("HEALTHSYNC_REDIS_URL", str(settings.redis.url))
    monkeypatch.setenv("HEALTHSYNC_REDIS_PREFIX", settings.redis.prefix)
    path = tmp_path / "run" / "keyring.json"
    assert main(["keys", "init", "--keyring", str(path)]) == 0
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["keys", "init", "--keyring", str(path)]) == 2, "never overwrites a keyring"
    assert main(["keys", "rotate", "--keyring", str(path)]) == 0
    assert main(["keys", "retire", "k1", "--keyring", str(path)]) == 0
    assert main(["keys", "retire", "k2", "--keyring", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "active key is now k2" in out and "retired k1" in out
    assert "exists already" in err and "'k2' is the active key" in err
    doc = json.loads(path.read_text())
    assert (doc["active"], sorted(doc["keys"]), doc["retired"]) == ("k2", ["k2"], ["k1"])


@pytest.fixture
def kms(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """moto's KMS in server mode on a loopback port, and a KMS key in it."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        client = boto3.client("kms", region_name="eu-west-1", endpoint_url=endpoint)
        key_id = client.create_key(Description="healthsync test")["KeyMetadata"]["KeyId"]
        yield endpoint, key_id
    finally:
        server.stop()


def test_kms_data_keys_are_stored_only_encrypted(
    kms: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint, key_id = kms
    path = tmp_path / "keyring.json"
    monkeypatch.setenv("HEALTHSYNC_CRYPTO_KEYRING_FILE", str(path))
    monkeypatch.setenv("HEALTHSYNC_CRYPTO_KMS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("HEALTHSYNC_CRYPTO_AWS_REGION", "eu-west-1")
    assert main(["keys", "init", "--kms-key-id", key_id]) == 0
    monkeypatch.setenv("HEALTHSYNC_CRYPTO_KMS_KEY_ID", key_id)
    assert main(["keys", "rotate"]) == 0

    settings = Settings.load()
    codec = Codec.from_settings(settings)
    assert codec.cipher is not None
    doc = json.loads(path.read_text())
    assert doc["kms_key_id"] == key_id and doc["active"] == "k2"
    plain = codec.cipher.keyring.keys
    for key_id_in_file, stored in doc["keys"].items():
        # What is stored is KMS's blob, not the key: the key needs KMS Decrypt.
        blob = base64.b64decode(stored)
        assert len(blob) > 32 and plain[key_id_in_file] not in blob
    sealed = codec.seal(PHI, "hs:x")
    assert codec.open(sealed, "hs:x") == PHI

    settings.crypto.kms_key_id = None
    with pytest.raises(KeyringError, match="keys come from KMS, but KMS is not configured"):
        Codec.from_settings(settings)


def _v1_seal(key: bytes, plaintext: bytes, aad: bytes, key_id: bytes = b"k1") -> bytes:
    """A value as the first format sealed it: AES-256-GCM, version byte 0x01."""
    nonce = os.urandom(12)
    header = b"\xa5\x01" + bytes([len(key_id)]) + key_id
    return header + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _v2_seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """A format 2 value under the subkey `nonce` picks, as any version may have sealed it
    (before, nonces were all 96 bits of the keyed hash, so they used every subkey)."""
    info = b"healthsync v2 subkey " + nonce[:2]
    subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
    return b"\xa5\x02\x02k1" + nonce + AESGCMSIV(subkey).encrypt(nonce, plaintext, aad)


def test_new_values_use_256_subkeys_and_a_value_under_any_subkey_opens(tmp_path: Path) -> None:
    """With the key rotated after 2^31 seals, no subkey seals more than about 2^23 values;
    the subkeys kept built are the ones seals use. Values sealed under the others before
    stay readable, in a cipher that has sealed and in a fresh one."""
    ring = Keyring.load(saved(tmp_path))
    cipher = Cipher(ring)
    nonces = {cipher.seal(n.to_bytes(4, "big") + PHI, b"hs:x")[5:17] for n in range(5_000)}
    assert len(nonces) == 5_000, "different values, different nonces"
    assert {nonce[0] for nonce in nonces} == {0}, "a seal used a subkey outside the first 256"
    assert len({nonce[1] for nonce in nonces}) == 256, "the 256 subkeys are all used"

    key = ring.keys["k1"]
    for first_two in (b"\x00\x07", b"\x01\x00", b"\x9c\x41", b"\xff\xff"):
        nonce = first_two + os.urandom(10)
        old = _v2_seal(key, nonce, PHI, b"hs:latest:x")
        assert cipher.open(old, b"hs:latest:x") == PHI
        assert Cipher(ring).open(old, b"hs:latest:x") == PHI
        with pytest.raises(DecryptError, match="authentication failed"):
            cipher.open(old, b"hs:latest:y")


def test_a_seal_is_the_same_bytes_in_every_version(tmp_path: Path) -> None:
    """Deterministic seals keep replays idempotent only if every version seals a value
    to the same bytes (a batch sealed before an upgrade may be rewritten after it): the
    nonce is the keyed BLAKE2b of the length-prefixed place and the plaintext
    (docs/DESIGN.md), computed here from the format, not from the code."""
    ring = Keyring.load(saved(tmp_path))
    key = ring.keys["k1"]
    info = b"healthsync v2 nonce"
    nonce_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
    cipher = Cipher(ring)
    for plaintext, aad in ((PHI, b"hs:latest:x"), (b"", b""), (os.urandom(3000), b"kafka:x")):
        message = len(aad).to_bytes(4, "big") + aad + plaintext
        nonce = b"\x00" + hashlib.blake2b(message, key=nonce_key, digest_size=11).digest()
        assert cipher.seal(plaintext, aad) == _v2_seal(key, nonce, plaintext, aad)


def test_values_are_sealed_with_aes_gcm_siv_and_old_ones_stay_readable(tmp_path: Path) -> None:
    ring = Keyring.load(saved(tmp_path))
    cipher = Cipher(ring)
    sealed = cipher.seal(PHI, b"hs:latest:x")
    assert sealed[:2] == b"\xa5\x02", "the format that names AES-GCM-SIV"
    assert cipher.seal(PHI, b"hs:latest:x") == sealed, "still deterministic: replays stay put"
    assert cipher.open(sealed, b"hs:latest:x") == PHI
    # Not the data key itself: AES-GCM or AES-GCM-SIV under the raw key opens nothing.
    nonce, body = sealed[5:17], sealed[17:]
    for aead in (AESGCM(ring.keys["k1"]), AESGCMSIV(ring.keys["k1"])):
        with pytest.raises(InvalidTag):
            aead.decrypt(nonce, body, b"hs:latest:x")

    old = _v1_seal(ring.keys["k1"], PHI, b"hs:latest:x")
    assert cipher.open(old, b"hs:latest:x") == PHI
    with pytest.raises(DecryptError, match="authentication failed"):
        cipher.open(old, b"hs:latest:y")
    with pytest.raises(DecryptError, match="format 0x07"):
        cipher.open(b"\xa5\x07" + sealed[2:], b"hs:latest:x")


def test_seals_are_counted_per_key(tmp_path: Path) -> None:
    ring = Keyring.load(saved(tmp_path))
    cipher = Cipher(ring)
    for n in range(5):
        cipher.seal(PHI, f"hs:latest:{n}".encode())
    assert cipher.seals == {"k1": 5}


def test_a_cipher_holds_its_subkeys_in_a_few_mebibytes(tmp_path: Path) -> None:
    """A process that opens values sealed before meets all 65,536 subkeys of a data key;
    what it keeps of them must stay small (it was 15 MiB per data key in a cache)."""
    ring = Keyring.load(saved(tmp_path))
    key = ring.keys["k1"]
    # 200,000 values under random subkeys: about 95% of them.
    sealed = [
        _v2_seal(key, os.urandom(12), n.to_bytes(4, "big") + PHI, b"hs:x") for n in range(200_000)
    ]
    tracemalloc.start()
    try:
        cipher = Cipher(ring)
        opened = [cipher.open(value, b"hs:x") for value in sealed]
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    held -= sum(sys.getsizeof(o) for o in opened) + sys.getsizeof(opened)
    assert held < 4 * 2**20, f"{held / 2**20:.1f} MiB held for one data key's subkeys"
    assert all(o == n.to_bytes(4, "big") + PHI for n, o in enumerate(opened))
