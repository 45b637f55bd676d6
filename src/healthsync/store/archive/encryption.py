"""Parquet Modular Encryption of the identified archive (AES-256-GCM, encrypted footer).

Each file gets a fresh 256-bit data key from Parquet's key tools, which
encrypts every column and the footer (``uniform_encryption``, ``AES_GCM_V1``):
without it no byte of the file shows an identifier, a vital, or even the
schema. The data key is wrapped by a master key and the wrapped key kept in
the footer's key metadata, so a file needs nothing beside it:

- by default the master key is the keyring's active key (its id is recorded,
  so files stay readable after a rotation until that key is retired); the
  wrapping key is derived from it, so it never encrypts two kinds of data;
- with ``crypto.kms_key_id`` set, KMS ``Encrypt``/``Decrypt`` wrap the data keys
  under that KMS key, and reading needs ``kms:Decrypt`` on it. Files written
  before KMS was set, under a keyring key, still open with the keyring, and
  `healthsync keys rewrap` moves them to the KMS key.

Single wrapping (no key-encryption keys in between), because Parquet's
intermediate keys are 128-bit and the data keys are meant to stay 256-bit.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from healthsync.config import CryptoSettings
from healthsync.errors import ConfigError
from healthsync.security.keyring import Keyring
from healthsync.store.archive.errors import ArchiveError

_WRAP_INFO = b"healthsync archive key wrapping v1"
_NONCE_BYTES = 12
# How often a key id that is not in the keyring may make it be read again.
_RELOAD_S = 1.0


class KeyringKmsClient(pe.KmsClient):  # type: ignore[misc]
    """Wraps Parquet data keys with keys derived from the keyring's keys (by key id).

    With `reload`, a key id it does not know (nor as retired) makes it read the keyring
    again, at most once a second, as :class:`healthsync.security.crypto.Cipher` does:
    a long-running reader (the API's) meets files that a process started after a
    rotation wrapped under the new key.
    """

    def __init__(self, keyring: Keyring, reload: Callable[[], Keyring] | None = None) -> None:
        super().__init__()
        self._reload = reload
        self._reloaded_at = -float("inf")
        self._lock = threading.Lock()  # pyarrow unwraps from its own threads
        self._use(keyring)

    def _use(self, keyring: Keyring) -> None:
        self._aead = {
            key_id: AESGCM(hmac.digest(key, _WRAP_INFO, "sha256"))
            for key_id, key in keyring.keys.items()
        }
        self._retired = set(keyring.retired)

    def names(self, key_id: str) -> bool:
        """Whether `key_id` is one of this keyring's key ids, present or retired."""
        return key_id in self._aead or key_id in self._retired

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._key(master_key_identifier).encrypt(
            nonce, key_bytes, master_key_identifier.encode()
        )
        return base64.b64encode(nonce + sealed).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        raw = base64.b64decode(wrapped_key)
        try:
            return self._key(master_key_identifier).decrypt(
                raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], master_key_identifier.encode()
            )
        except InvalidTag:
            raise ArchiveError(
                f"the data key wrapped by keyring key {master_key_identifier!r} does not "
                "authenticate: another keyring, or a tampered file"
            ) from None

    def _key(self, key_id: str) -> AESGCM:
        aead = self._aead.get(key_id)
        if aead is None and self._reload is not None and key_id not in self._retired:
            with self._lock:
                now = time.monotonic()
                if key_id not in self._aead and now - self._reloaded_at >= _RELOAD_S:
                    self._reloaded_at = now
                    self._use(self._reload())
            aead = self._aead.get(key_id)
        if aead is None:
            state = "was retired" if key_id in self._retired else "is not in the keyring"
            raise ArchiveError(f"keyring key {key_id!r} {state}; its archive files are unreadable")
        return aead


class AwsKmsClient(pe.KmsClient):  # type: ignore[misc]
    """Wraps Parquet data keys with AWS KMS Encrypt/Decrypt under the named KMS key."""

    def __init__(self, client: Any, keyring: KeyringKmsClient | None = None) -> None:
        super().__init__()
        self._client = client
        # Unwraps the data keys of files written under keyring keys, before KMS was set.
        self._keyring = keyring

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        answer = self._client.encrypt(
            KeyId=master_key_identifier, Plaintext=key_bytes, EncryptionContext=_CONTEXT
        )
        return base64.b64encode(answer["CiphertextBlob"]).decode()

    def unwrap_key(self, wrapped_key: str, master_key_identifier: str) -> bytes:
        if self._keyring is not None and self._keyring.names(master_key_identifier):
            return self._keyring.unwrap_key(wrapped_key, master_key_identifier)
        answer = self._client.decrypt(
            CiphertextBlob=base64.b64decode(wrapped_key),
            KeyId=master_key_identifier,
            EncryptionContext=_CONTEXT,
        )
        return bytes(answer["Plaintext"])


# Bound into every KMS wrap: a blob from another use of the same KMS key does not unwrap here.
_CONTEXT = {"healthsync": "archive-data-key"}


class ParquetCrypto:
    """File encryption and decryption properties for pyarrow's Parquet reader and writer."""

    def __init__(self, client: pe.KmsClient, master_key: str) -> None:
        self.master_key = master_key
        self._factory = pe.CryptoFactory(lambda _config: client)
        self._connection = pe.KmsConnectionConfig()
        self._encryption = pe.EncryptionConfiguration(
            footer_key=master_key,
            uniform_encryption=True,
            encryption_algorithm="AES_GCM_V1",
            plaintext_footer=False,
            double_wrapping=False,
            internal_key_material=True,
            data_key_length_bits=256,
            cache_lifetime=timedelta(minutes=10),
        )
        self._decryption = pe.DecryptionConfiguration(cache_lifetime=timedelta(minutes=10))

    @classmethod
    def from_keyring(
        cls,
        keyring: Keyring,
        settings: CryptoSettings,
        reload: Callable[[], Keyring] | None = None,
    ) -> ParquetCrypto:
        """KMS wrapping when the settings name a KMS key, the keyring's otherwise; `reload`
        reads the keyring again (see :class:`KeyringKmsClient`)."""
        if settings.kms_key_id is None:
            return cls(KeyringKmsClient(keyring, reload), keyring.active)
        try:
            import boto3
        except ImportError:
            raise ConfigError("KMS wrapping needs boto3: pip install 'healthsync[aws]'") from None
        client = boto3.client(
            "kms", region_name=settings.aws_region, endpoint_url=settings.kms_endpoint_url
        )
        return cls(AwsKmsClient(client, KeyringKmsClient(keyring, reload)), settings.kms_key_id)

    def encryption_properties(self) -> Any:
        """For one file: each call draws a fresh data key."""
        return self._factory.file_encryption_properties(self._connection, self._encryption)

    def decryption_properties(self) -> Any:
        return self._factory.file_decryption_properties(self._connection, self._decryption)
