"""Opaque tokens the API hands out and takes back, such as a page cursor.

A token is its payload encrypted and authenticated (AES-256-GCM-SIV, random
nonce) under a key derived from the keyring's pseudonym key, which never
rotates: a token stays valid across restarts and API replicas, shows nothing
of its payload, and one altered, forged or made for another context (bound in
as associated data, e.g. the patient a cursor pages through) is refused.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCMSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from healthsync.security.keyring import CryptoError, Keyring

_NONCE_BYTES = 12
_TAG_BYTES = 16
# Longer tokens are not ours; refusing them early bounds the work a caller can cause.
MAX_TOKEN_CHARS = 512


class TokenError(CryptoError):
    """A token that is malformed, altered, or was not made for this context."""


class TokenSealer:
    def __init__(self, key: bytes, purpose: str) -> None:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"healthsync {purpose}".encode()
        ).derive(key)
        self._aead = AESGCMSIV(derived)

    @classmethod
    def from_keyring(cls, keyring: Keyring, purpose: str) -> TokenSealer:
        return cls(keyring.pseudonym_key, purpose)

    def seal(self, payload: bytes, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, payload, context.encode())
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode()

    def open(self, token: str, context: str) -> bytes:
        """The payload; :class:`TokenError` for anything this sealer did not make for `context`."""
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError("the token is too long")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise TokenError("the token is not base64url") from None
        if len(raw) < _NONCE_BYTES + _TAG_BYTES:
            raise TokenError("the token is too short")
        try:
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], context.encode())
        except InvalidTag:
            raise TokenError("the token was altered or made for another query") from None
