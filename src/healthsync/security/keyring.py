"""A keyring: the data keys by id, which one is active, and the pseudonym key.

The keyring is a JSON file that must not be readable by group or others:

    {"version": 1, "active": "k2", "retired": ["k0"], "kms_key_id": null,
     "keys": {"k1": "<base64 32 bytes>", "k2": "..."}, "pseudonym_key": "<base64>"}

With ``kms_key_id`` set, every key in the file is the KMS-encrypted blob of a
data key from ``GenerateDataKey(KeySpec=AES_256)``; the plaintext key exists
only in memory, after a KMS ``Decrypt`` when the keyring is loaded.

Sealing with the keys is :mod:`healthsync.security.crypto`'s.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from healthsync.errors import HealthSyncError

KEY_BYTES = 32


class CryptoError(HealthSyncError):
    """Encryption at rest could not be set up or used."""


class KeyringError(CryptoError):
    """The keyring file is missing, unsafe or malformed, or a key operation is not allowed."""


class KeyService(Protocol):
    """Where data keys come from at scale (AWS KMS); see :mod:`healthsync.security.kms`."""

    def generate_data_key(self, key_id: str) -> tuple[bytes, bytes]:
        """A new 32-byte key and its encrypted blob."""
        ...

    def decrypt(self, blob: bytes, key_id: str) -> bytes: ...


@dataclass
class Keyring:
    """Encryption keys by id, the active id, retired ids and the pseudonym key."""

    keys: dict[str, bytes]
    active: str
    pseudonym_key: bytes
    retired: list[str] = field(default_factory=list)
    kms_key_id: str | None = None
    # With KMS: the encrypted blob of each key, which is what the file stores.
    blobs: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def generate(cls, kms: KeyService | None = None, kms_key_id: str | None = None) -> Keyring:
        """A new keyring with one active key ``k1`` and a pseudonym key."""
        ring = cls(keys={}, active="", pseudonym_key=b"", kms_key_id=kms_key_id)
        ring.pseudonym_key, pseudonym_blob = ring._new_key(kms)
        if pseudonym_blob is not None:
            ring.blobs[""] = pseudonym_blob
        ring.rotate(kms)
        return ring

    def _new_key(self, kms: KeyService | None) -> tuple[bytes, bytes | None]:
        if self.kms_key_id is None:
            return secrets.token_bytes(KEY_BYTES), None
        if kms is None:
            raise KeyringError("this keyring's keys come from KMS, but no KMS client was given")
        plain, blob = kms.generate_data_key(self.kms_key_id)
        if len(plain) != KEY_BYTES:
            raise KeyringError(f"KMS returned a {len(plain)}-byte data key, expected 32")
        return plain, blob

    def rotate(self, kms: KeyService | None = None) -> str:
        """Add a new key and make it the active one; older keys stay for reading."""
        known = set(self.keys) | set(self.retired)
        number = 1
        while f"k{number}" in known:
            number += 1
        key_id = f"k{number}"
        self.keys[key_id], blob = self._new_key(kms)
        if blob is not None:
            self.blobs[key_id] = blob
        self.active = key_id
        return key_id

    def retire(self, key_id: str) -> None:
        """Delete a key's material: what it sealed becomes unreadable, for good."""
        if key_id == self.active:
            raise KeyringError(f"key {key_id!r} is the active key; rotate before retiring it")
        if key_id not in self.keys:
            state = "already retired" if key_id in self.retired else "not in the keyring"
            raise KeyringError(f"key {key_id!r} is {state}")
        del self.keys[key_id]
        self.blobs.pop(key_id, None)
        self.retired.append(key_id)

    # the file

    def to_json(self) -> dict[str, Any]:
        def stored(key_id: str, plain: bytes) -> str:
            material = self.blobs[key_id] if self.kms_key_id is not None else plain
            return base64.b64encode(material).decode()

        return {
            "version": 1,
            "active": self.active,
            "retired": list(self.retired),
            "kms_key_id": self.kms_key_id,
            "keys": {key_id: stored(key_id, plain) for key_id, plain in self.keys.items()},
            "pseudonym_key": stored("", self.pseudonym_key),
        }

    def save(self, path: Path) -> None:
        """Write the file readable by its owner only, atomically (a crash leaves the old one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".tmp")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o600)
            json.dump(self.to_json(), out, indent=2)
            out.write("\n")
        partial.replace(path)

    @classmethod
    def load(cls, path: Path, kms: KeyService | None = None) -> Keyring:
        """Read a keyring file, refusing one that group or others may read."""
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyringError(
                f"keyring file {path} not found; create it with `healthsync keys init`"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyringError(
                f"keyring file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return cls._from_json(doc, kms)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise KeyringError(f"keyring file {path} is malformed: {exc}") from exc

    @classmethod
    def _from_json(cls, doc: dict[str, Any], kms: KeyService | None) -> Keyring:
        if doc.get("version") != 1:
            raise ValueError(f"unsupported version {doc.get('version')!r}")
        kms_key_id: str | None = doc.get("kms_key_id")

        def material(key_id: str, text: str) -> tuple[bytes, bytes | None]:
            raw = base64.b64decode(text, validate=True)
            if kms_key_id is None:
                plain, blob = raw, None
            elif kms is None:
                raise KeyringError(
                    f"this keyring's keys come from KMS, but KMS is not configured: "
                    f"set HEALTHSYNC_CRYPTO_KMS_KEY_ID={kms_key_id}"
                )
            else:
                plain, blob = kms.decrypt(raw, kms_key_id), raw
            if len(plain) != KEY_BYTES:
                name = f"key {key_id!r}" if key_id else "the pseudonym key"
                raise ValueError(f"{name} is {len(plain)} bytes, expected 32")
            return plain, blob

        ring = cls(keys={}, active=str(doc["active"]), pseudonym_key=b"", kms_key_id=kms_key_id)
        ring.retired = [str(r) for r in doc.get("retired", [])]
        ring.pseudonym_key, blob = material("", doc["pseudonym_key"])
        if blob is not None:
            ring.blobs[""] = blob
        for key_id, text in doc["keys"].items():
            ring.keys[key_id], blob = material(key_id, text)
            if blob is not None:
                ring.blobs[key_id] = blob
        if ring.active not in ring.keys:
            raise ValueError(f"the active key {ring.active!r} is not in the keyring")
        return ring
