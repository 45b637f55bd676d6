"""AES-256-GCM-SIV envelope encryption of stored values, with keys that rotate.

A sealed value is ``MAGIC | VERSION | len(key_id) | key_id | nonce(12) | ciphertext+tag``.

Format 2 (``VERSION`` 0x02, what :meth:`Cipher.seal` writes) is AES-256-GCM-SIV
under one of 65,536 subkeys of the data key, derived with HKDF-SHA256; the
nonce's first two bytes pick the subkey. Format 1 (0x01, AES-256-GCM under the
data key itself) is still opened, so data sealed before stays readable;
`healthsync keys rewrap` moves it to format 2. :attr:`Cipher.seals` counts this
process's seals per key id; with a :class:`SealUsage`
(:mod:`healthsync.security.rotation`) they are also counted across processes
and the active key rotates after 2^31 by default, half of NIST's 2^32-messages
limit for an AES-GCM key (about 15 seals per reading: 2,000 patients at 1 Hz
reach 2^32 in about 40 hours).

:meth:`Cipher.seal` uses the first 256 subkeys: its nonces start with a zero
byte. So no subkey seals more than about 2^23 values before the key rotates,
2^9 times below that limit before GCM-SIV's own per-nonce key derivation is
counted, and those 256 AEADs stay built (about 0.7 MiB per data key). Building
an AEAD and its key schedule at each seal made a seal of 300 bytes take 6.6 us
instead of 3.9. Any of the 65,536 subkeys still opens: values sealed before
used them all.

The key id travels with every value, so the active key can change at any time:
new values use the new key, old values stay readable with the key they name
until that key is retired (its material deleted from the keyring), after which
they fail with a clear :class:`DecryptError` instead of decrypting to garbage.

The associated data (AAD) names the place a value is stored (its Redis key and
field, or its topic role and message key): a value copied to another place
fails authentication, so one patient's record cannot be swapped for another's.

The nonce is synthetic: after the zero byte, an 11-byte keyed BLAKE2b (a PRF,
about twice as fast here as HMAC-SHA256) of the associated data and the
plaintext, under a key derived from the data key. The same value written twice
to the same place seals to the same bytes, so the pipeline's replays stay
idempotent (a re-added sorted-set member is the same member; a replayed batch
leaves Redis byte-for-byte as it was); different values get different nonces
with the odds of random 88-bit ones (2^-88 per pair), and GCM-SIV resists a
repeated nonce: it would reveal only whether the two values are the same. All
the synthetic nonce reveals is that a place holds the very same value again.

Identifiers that must stay searchable (Redis key names, hash fields, set
members, Kafka message keys) are replaced by a pseudonym: a keyed HMAC-SHA256,
deterministic so lookups and Kafka partitioning still work per patient. Its key
is separate from the encryption keys and does not rotate, because every key
name depends on it.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import time
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from healthsync.domain.hmac_sha256 import hmac_sha256
from healthsync.security.keyring import KEY_BYTES, CryptoError, Keyring, KeyringError

MAGIC = b"\xa5"
VERSION_GCM = b"\x01"  # format 1: AES-256-GCM under the data key (opened, no longer written)
VERSION = b"\x02"  # format 2: AES-256-GCM-SIV under an HKDF subkey
_HEADER = MAGIC + VERSION
_VERSIONS = frozenset({VERSION_GCM[0], VERSION[0]})
_NONCE_BYTES = 12
_TAG_BYTES = 16
# Format 2 seals under one of this many subkeys of the data key: the nonce's first two bytes.
_SUBKEYS = 1 << 16
# The subkeys Cipher.seal uses, and keeps built: those of nonces that start with a zero byte.
_SEALING_SUBKEYS = 1 << 8
# 128 bits of the HMAC: collisions are out of reach for any number of patients.
_PSEUDONYM_HEX = 32
# A value under an unknown key makes a cipher with seal counting read its keyring
# again, at most this often (seconds): made-up key ids cannot keep it reading.
_RELOAD_S = 1.0


class DecryptError(CryptoError):
    """A stored value could not be decrypted; the message says why."""


def _hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(key)


class _DataKey:
    """One data key's AEADs: format 2's subkeys (made when first used) and format 1's."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self.gcm = AESGCM(key)
        self.nonce_key = _hkdf(key, b"healthsync v2 nonce")
        # Keyed once: each seal's nonce hash starts from a copy (keying hashes a block).
        self.nonce_hash = hashlib.blake2b(key=self.nonce_key, digest_size=_NONCE_BYTES - 1)
        # The subkeys seals use stay built. Of the others (only values sealed before use
        # them) the derived bytes are kept in one 2 MiB table, filled in as they are first
        # used: an AESGCMSIV holds about 2.8 KiB once used, so all 65,536 would take
        # 180 MiB in every process that opens, and bytes objects took 15 MiB.
        self._sealing: dict[int, AESGCMSIV] = {}
        self._subkeys = bytearray(_SUBKEYS * KEY_BYTES)
        self._derived = bytearray(_SUBKEYS)  # 1 where the table holds the subkey

    def subkey(self, index: bytes) -> AESGCMSIV:
        """The AEAD of subkey `index` (two bytes: the nonce's first two)."""
        n = int.from_bytes(index, "big")
        if n < _SEALING_SUBKEYS:
            aead = self._sealing.get(n)
            if aead is None:
                aead = self._sealing[n] = AESGCMSIV(self._derive(index))
            return aead
        start = n * KEY_BYTES
        if not self._derived[n]:
            derived = self._derive(index)
            self._subkeys[start : start + KEY_BYTES] = derived
            self._derived[n] = 1
            return AESGCMSIV(derived)
        return AESGCMSIV(bytes(self._subkeys[start : start + KEY_BYTES]))

    def _derive(self, index: bytes) -> bytes:
        return _hkdf(self._key, b"healthsync v2 subkey " + index)


class SealUsage(Protocol):
    """Where a cipher reports its seals (see :class:`healthsync.security.rotation.KeyUsage`)."""

    batch: int

    def record(self, key_id: str, sealed: int) -> Keyring | None:
        """Count seals under `key_id`; the keyring to use from now on if its active key changed."""
        ...

    def reload(self) -> Keyring: ...


class Cipher:
    """Seals and opens values with a keyring's keys; makes pseudonyms with its HMAC key.

    With `usage`, seals are counted per key across processes and the active key
    changes when it has sealed enough; a value under a key this cipher does not
    know makes it read the keyring again (another process may have rotated).
    """

    def __init__(self, keyring: Keyring, usage: SealUsage | None = None) -> None:
        self._keys: dict[str, _DataKey] = {}
        self._use(keyring)
        self.usage = usage
        self._pending = 0
        self._batch = usage.batch if usage is not None else 0
        self._reloaded_at = -math.inf
        self._pseudonym_key = keyring.pseudonym_key
        # Derived, so that an id and a pseudonym of the same text never coincide.
        self.id_key = hmac.digest(keyring.pseudonym_key, b"healthsync ids v1", "sha256")
        # Seals made by this process, per key id (operators watch them against rotation).
        self.seals: dict[str, int] = {}
        # Patients are few and recur in every batch: remember their pseudonyms.
        self.pseudonym = functools.lru_cache(maxsize=100_000)(self._pseudonym)

    def _use(self, keyring: Keyring) -> None:
        """Seal with `keyring`'s active key from now on; open with any of its keys."""
        active = keyring.active.encode()
        if not 0 < len(active) < 256:
            raise KeyringError(f"key id {keyring.active!r} must be 1 to 255 bytes")
        known = self._keys
        self._keys = {k: known.get(k) or _DataKey(key) for k, key in keyring.keys.items()}
        self.keyring = keyring
        self._active_key = self._keys[keyring.active]
        self._prefix = _HEADER + bytes([len(active)]) + active

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        key = self._active_key
        # A zero byte, then 88 bits of the keyed hash of the length-prefixed aad and the
        # plaintext (hashed in two parts rather than copied into one): one of the subkeys
        # kept built.
        digest = key.nonce_hash.copy()
        digest.update(len(aad).to_bytes(4, "big") + aad)
        digest.update(plaintext)
        nonce = b"\x00" + digest.digest()
        active = self.keyring.active
        self.seals[active] = self.seals.get(active, 0) + 1
        sealed = self._prefix + nonce + key.subkey(nonce[:2]).encrypt(nonce, plaintext, aad)
        self._pending += 1
        if self._pending == self._batch:
            self._report(active)
        return sealed

    def _report(self, key_id: str) -> None:
        sealed, self._pending = self._pending, 0
        if self.usage is None:
            return
        changed = self.usage.record(key_id, sealed)
        if changed is not None:
            self._use(changed)

    def open(self, sealed: bytes, aad: bytes) -> bytes:
        if sealed[:1] != MAGIC or len(sealed) < 3:
            raise DecryptError("not a HealthSync ciphertext")
        if sealed[1] not in _VERSIONS:
            raise DecryptError(f"format 0x{sealed[1]:02x} is not one this version can open")
        id_end = 3 + sealed[2]
        if len(sealed) < id_end + _NONCE_BYTES + _TAG_BYTES:
            raise DecryptError("not a HealthSync ciphertext (truncated)")
        key_id = sealed[3:id_end].decode("ascii", "replace")
        key = self._keys.get(key_id)
        usage = self.usage
        if key is None and usage is not None and self._may_reload(key_id):
            self._use(usage.reload())  # a key made since this process started
            key = self._keys.get(key_id)
        if key is None:
            if key_id in self.keyring.retired:
                raise DecryptError(f"key {key_id!r} was retired; its data is no longer readable")
            raise DecryptError(f"key {key_id!r} is not in the keyring")
        nonce = sealed[id_end : id_end + _NONCE_BYTES]
        aead = key.gcm if sealed[1:2] == VERSION_GCM else key.subkey(nonce[:2])
        try:
            return aead.decrypt(nonce, sealed[id_end + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise DecryptError("authentication failed: wrong key or tampered data") from None

    def _may_reload(self, key_id: str) -> bool:
        """Whether to read the keyring again for `key_id`: at most once a second."""
        if key_id in self.keyring.retired:
            return False
        now = time.monotonic()
        if now - self._reloaded_at < _RELOAD_S:
            return False
        self._reloaded_at = now
        return True

    def _pseudonym(self, value: str) -> str:
        """A keyed, deterministic stand-in for an identifier (see the module docstring)."""
        return hmac_sha256(self._pseudonym_key, value.encode()).hex()[:_PSEUDONYM_HEX]


def key_id_of(sealed: bytes) -> str | None:
    """The key id a sealed value names, or None if it is not a HealthSync ciphertext."""
    if sealed[:1] != MAGIC or len(sealed) < 3 or sealed[1] not in _VERSIONS:
        return None
    return sealed[3 : 3 + sealed[2]].decode("ascii", "replace")


def is_current(sealed: bytes, active: str) -> bool:
    """Whether a sealed value is in the current format under the `active` key."""
    return sealed[:2] == _HEADER and key_id_of(sealed) == active
