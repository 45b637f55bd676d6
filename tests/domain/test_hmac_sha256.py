"""The HMAC with pads hashed once gives hmac.digest's bytes, whatever the key."""

from __future__ import annotations

import hmac
import random

from healthsync.domain import hmac_sha256 as module
from healthsync.domain.hmac_sha256 import hmac_sha256
from healthsync.domain.readings import reading_id_for


def test_rfc_4231_test_case_2() -> None:
    digest = hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert digest.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_equals_the_standard_library_for_every_key_length() -> None:
    rng = random.Random(3)
    # Empty, short, a SHA-256 block exactly, and longer than a block (hashed first).
    for size in (0, 1, 16, 32, 63, 64, 65, 200):
        key = rng.randbytes(size)
        for length in (0, 1, 25, 64, 1000):
            message = rng.randbytes(length)
            assert hmac_sha256(key, message) == hmac.digest(key, message, "sha256")


def test_a_key_used_again_gives_the_same_digest_as_at_first() -> None:
    key, message = b"k" * 32, b"mon-1\x1fseq\x1f7"
    first = hmac_sha256(key, message)
    hmac_sha256(key, b"something else")  # the kept pads must not carry this message
    assert hmac_sha256(key, message) == first == hmac.digest(key, message, "sha256")


def test_more_keys_than_it_keeps_still_give_the_right_digests() -> None:
    keys = [bytes([n]) * 32 for n in range(module._MAX_KEYS * 2 + 1)]
    for _ in range(2):
        for key in keys:
            assert hmac_sha256(key, b"m") == hmac.digest(key, b"m", "sha256")
    assert len(module._pads) <= module._MAX_KEYS


def test_reading_ids_are_what_they_were() -> None:
    """Ids already stored (seen sets, alerts, the archive) must still match a resend."""
    key = bytes(range(32))
    basis = b"bedside-7\x1fseq\x1f41"
    expected = hmac.digest(key, basis, "sha256")[:12].hex()
    assert reading_id_for("bedside-7", 41, 0, key=key) == expected
