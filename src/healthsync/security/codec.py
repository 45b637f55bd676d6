"""The one object every Redis and Kafka writer and reader uses for PHI at rest.

Built once per process from the settings (:meth:`Codec.from_settings`) and
passed down. With ``crypto.enabled`` it seals values with AES-256-GCM and turns
patient ids in key names, hash fields, set members and Kafka message keys into
pseudonyms (through :attr:`Codec.keys`); with encryption off every method is
the identity, so the same code runs either way.

The associated data of a sealed value is its place: the Redis key (and hash
field), or the topic's role and the message key. Roles, not topic names, so a
renamed topic keeps its data readable.

A sealed Kafka value of 1 KiB or more is compressed before it is sealed:
sealed bytes do not compress, so librdkafka's batch compression cannot shrink
them, and a reading's Bundle of Observations is 7.5 kB of repetitive JSON that
Zstandard, against a dictionary of the topics' documents, makes about 260
bytes (:mod:`healthsync.security.compression`). The anomaly engine's state in
Redis, rewritten with every reading in live operation, is compressed with LZ4
(:meth:`Codec.seal_compressing`): 5-6 kB of JSON, mostly timestamps, become
about 1.5 kB. Opening expands either again, refusing one that would grow past
16 MiB. Values written uncompressed open as they always did (JSON never starts
with either format's first bytes).
"""

from __future__ import annotations

from healthsync.config import CryptoSettings, Settings
from healthsync.names import RedisKeys
from healthsync.security.compression import compress_lz4, compress_with_dictionary, expand
from healthsync.security.crypto import MAGIC, Cipher, DecryptError
from healthsync.security.keyring import Keyring, KeyService
from healthsync.security.rotation import KeyUsage

# Topic roles, bound into the associated data of Kafka values.
VITALS = "vitals"
OBSERVATIONS = "observations"
ALERTS = "alerts"
DLQ = "dlq"

# Sealed values this long or longer are compressed first (see the module's text).
COMPRESS_FROM = 1024


def _clear(value: str) -> str:
    return value


class Codec:
    def __init__(self, cipher: Cipher | None, prefix: str = "hs", groups: int = 1) -> None:
        self.cipher = cipher
        pseudonym = cipher.pseudonym if cipher is not None else _clear
        self.keys = RedisKeys(prefix, pseudonym, groups)

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        """The codec the settings ask for; raises a clear error if the keyring is unusable."""
        crypto = settings.crypto
        if not crypto.enabled:
            return cls(None, settings.redis.prefix, settings.redis.groups)
        usage = None
        if crypto.rotate_after_seals:
            usage = KeyUsage(crypto.keyring_file, crypto.rotate_after_seals, key_service(crypto))
        cipher = Cipher(load_keyring(crypto), usage)
        return cls(cipher, settings.redis.prefix, settings.redis.groups)

    @property
    def enabled(self) -> bool:
        return self.cipher is not None

    def pseudonym(self, value: str) -> str:
        return self.keys.pseudonym(value)

    @property
    def id_key(self) -> bytes | None:
        """The key of reading and alert ids (None with encryption off: unkeyed ids)."""
        return self.cipher.id_key if self.cipher is not None else None

    def seal(self, value: bytes, place: str) -> bytes:
        """`value` encrypted and bound to `place` (a Redis key, or see :meth:`field`)."""
        if self.cipher is None:
            return value
        return self.cipher.seal(value, place.encode())

    def open(self, value: bytes, place: str) -> bytes:
        """The plaintext of a value :meth:`seal` wrote at `place`; DecryptError otherwise."""
        if self.cipher is None:
            if value[:1] == MAGIC:
                raise DecryptError("the value is encrypted but crypto.enabled is false")
            return value
        return self.cipher.open(value, place.encode())

    @staticmethod
    def field(key: str, field: str) -> str:
        """The place of one field of a Redis hash."""
        return f"{key}\0{field}"

    # Kafka

    def message_key(self, patient_id: str) -> bytes:
        """The Kafka message key for a patient: partitioning stays per patient."""
        return self.pseudonym(patient_id).encode()

    def seal_compressing(self, value: bytes, place: str) -> bytes:
        """:meth:`seal`, compressing a value of ``COMPRESS_FROM`` bytes or more first.

        Only when sealing: with encryption off the value stays as it is, readable
        and compressible by whatever carries it.
        """
        if self.cipher is not None and len(value) >= COMPRESS_FROM:
            value = compress_lz4(value)
        return self.seal(value, place)

    def open_expanding(self, value: bytes, place: str) -> bytes:
        """The plaintext of a value :meth:`seal_compressing` (or :meth:`seal`) wrote."""
        return expand(self.open(value, place))

    def seal_message(self, role: str, key: bytes, value: bytes) -> bytes:
        """A Kafka value sealed, compressed against the topics' dictionary first (only when
        sealing, as :meth:`seal_compressing`)."""
        if self.cipher is not None and len(value) >= COMPRESS_FROM:
            value = compress_with_dictionary(value)
        return self.seal(value, _message_place(role, key))

    def open_message(self, role: str, key: bytes | None, value: bytes) -> bytes:
        return self.open_expanding(value, _message_place(role, key or b""))


def _message_place(role: str, key: bytes) -> str:
    return f"kafka:{role}\0{key.decode('utf-8', 'replace')}"


def load_keyring(settings: CryptoSettings) -> Keyring:
    return Keyring.load(settings.keyring_file, key_service(settings))


def ensure_keyring(settings: CryptoSettings) -> bool:
    """Create the keyring file if encryption is on and it is missing; True if created."""
    if not settings.enabled or settings.keyring_file.exists():
        return False
    ring = Keyring.generate(key_service(settings), settings.kms_key_id)
    ring.save(settings.keyring_file)
    return True


def key_service(settings: CryptoSettings) -> KeyService | None:
    """The KMS client the settings name, or None for locally generated keys."""
    if settings.kms_key_id is None:
        return None
    from healthsync.security.kms import KmsKeys

    return KmsKeys(settings.aws_region, settings.kms_endpoint_url)
