"""Sealed Kafka values: large ones are compressed before sealing (against the topics'
dictionary), and opened back intact; values written in the earlier formats still open."""

from __future__ import annotations

import hashlib
import time
from importlib import resources
from pathlib import Path

import lz4.frame
import orjson
import pytest
import zstandard

from healthsync.config import Settings
from healthsync.domain.readings import Reading
from healthsync.fhir.observations import observations_for, reading_bundle
from healthsync.security import codec as roles
from healthsync.security.codec import Codec
from healthsync.security.crypto import DecryptError
from healthsync.security.keyring import Keyring


def _codec(tmp_path: Path, enabled: bool = True) -> Codec:
    keyring = tmp_path / "keyring.json"
    Keyring.generate().save(keyring)
    return Codec.from_settings(Settings(crypto={"keyring_file": str(keyring), "enabled": enabled}))


def _bundle(codec: Codec) -> bytes:
    now = time.time()
    reading = Reading(
        "a1b2c3d4e5f6a1b2c3d4e5f6",
        "mon-1",
        "P-1",
        now,
        now,
        {"heart_rate": 72, "spo2": 97, "temp": 36.8, "resp_rate": 16, "bp_sys": 120, "bp_dia": 80},
        seq=5,
    )
    return orjson.dumps(reading_bundle(reading, observations_for(reading, codec.id_key)))


def test_a_reading_bundle_goes_on_the_topic_at_under_a_tenth_of_its_size(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    value = _bundle(codec)
    key = codec.message_key("P-1")
    sealed = codec.seal_message(roles.OBSERVATIONS, key, value)
    # Sealed bytes cannot be compressed by the producer's batch compression: without this
    # the broker keeps the whole 7 KiB of every reading's Observations (LZ4 alone: 1.4 KiB).
    assert len(value) > 6000
    assert len(sealed) < len(value) / 10
    assert codec.open_message(roles.OBSERVATIONS, key, sealed) == value
    # Still bound to its place: another key or role does not open it.
    with pytest.raises(DecryptError):
        codec.open_message(roles.OBSERVATIONS, codec.message_key("P-2"), sealed)
    with pytest.raises(DecryptError):
        codec.open_message(roles.ALERTS, key, sealed)


def test_small_values_and_values_sealed_before_compression_open_as_they_were(
    tmp_path: Path,
) -> None:
    codec = _codec(tmp_path)
    key = codec.message_key("P-1")
    small = b'{"patient_id": "P-1", "heart_rate": 71}'
    assert codec.open_message(roles.VITALS, key, codec.seal_message(roles.VITALS, key, small)) == (
        small
    )
    # A large value sealed whole (as every value was before compression) still opens, and
    # so does one compressed with LZ4 (as Kafka values were until 2026-12-05).
    large = _bundle(codec)
    place = f"kafka:{roles.OBSERVATIONS}\0{key.decode()}"
    sealed_whole = codec.seal(large, place)
    assert codec.open_message(roles.OBSERVATIONS, key, sealed_whole) == large
    sealed_lz4 = codec.seal(lz4.frame.compress(large, store_size=True), place)
    assert codec.open_message(roles.OBSERVATIONS, key, sealed_lz4) == large


def test_the_topics_dictionary_never_changes() -> None:
    """Every Kafka value compressed with dictionary 1 needs its very bytes to open: a better
    dictionary is added under the next number, never written over this one."""
    text = resources.files("healthsync.security").joinpath("dictionaries/1.json").read_bytes()
    assert hashlib.sha256(text).hexdigest() == (
        "7013033222d74421ac79d81b04238589dd7296b5522937607c2ba013ae77f115"
    )


def test_with_encryption_off_values_stay_plain_json_for_any_consumer(tmp_path: Path) -> None:
    codec = _codec(tmp_path, enabled=False)
    value = _bundle(codec)
    key = codec.message_key("P-1")
    assert codec.seal_message(roles.OBSERVATIONS, key, value) == value


def test_a_compressed_value_that_would_expand_past_the_limit_is_refused(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    key = codec.message_key("P-1")
    place = f"kafka:{roles.OBSERVATIONS}\0{key.decode()}"
    bomb = lz4.frame.compress(b"0" * (17 << 20), store_size=True)  # 17 MiB in about 70 KiB
    with pytest.raises(DecryptError, match="outside 1 to 16777216"):
        codec.open_message(roles.OBSERVATIONS, key, codec.seal(bomb, place))
    damaged = bytearray(lz4.frame.compress(_bundle(codec), store_size=True))
    damaged[-20:] = bytes(20)
    with pytest.raises(DecryptError, match="damaged compressed value"):
        codec.open_message(roles.OBSERVATIONS, key, codec.seal(bytes(damaged), place))


def test_a_dictionary_value_that_is_unsound_is_refused(tmp_path: Path) -> None:
    codec = _codec(tmp_path)
    key = codec.message_key("P-1")
    place = f"kafka:{roles.OBSERVATIONS}\0{key.decode()}"

    def refused(value: bytes, reason: str) -> None:
        with pytest.raises(DecryptError, match=reason):
            codec.open_message(roles.OBSERVATIONS, key, codec.seal(value, place))

    bomb = zstandard.ZstdCompressor().compress(b"0" * (17 << 20))  # 17 MiB in under 1 KiB
    refused(b"HSZ\x01" + bomb, "outside 1 to 16777216")
    good = codec.open(codec.seal_message(roles.OBSERVATIONS, key, _bundle(codec)), place)
    assert good.startswith(b"HSZ\x01")
    refused(b"HSZ\x09" + good[4:], "dictionary 9, which this version lacks")
    damaged = bytearray(good)
    damaged[-40:] = bytes(40)
    refused(bytes(damaged), "damaged compressed value")


@pytest.mark.parametrize("enabled", [True, False])
def test_a_dictionary_value_cut_short_is_refused_not_a_crash(tmp_path: Path, enabled: bool) -> None:
    """Three bytes of the dictionary header and nothing more: an IndexError took the
    archiver down, and its restart read the same message again."""
    codec = _codec(tmp_path, enabled)
    key = codec.message_key("P-1")
    place = f"kafka:{roles.VITALS}\0{key.decode()}"
    value = codec.seal(b"HSZ", place) if enabled else b"HSZ"
    with pytest.raises(DecryptError, match="damaged compressed value"):
        codec.open_message(roles.VITALS, key, value)
