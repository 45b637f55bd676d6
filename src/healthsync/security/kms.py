"""AWS KMS as the source of data keys for the keyring (the ``aws`` extra: boto3).

Only the encrypted blob of each data key is written to the keyring file; the
plaintext key comes back from KMS ``Decrypt`` when a process loads the keyring,
so a copied keyring file is useless without access to the KMS key.
"""

from __future__ import annotations

from typing import Any

from healthsync.security.keyring import KeyringError


class KmsKeys:
    """A :class:`healthsync.security.keyring.KeyService` over one KMS endpoint."""

    def __init__(self, region: str | None = None, endpoint_url: str | None = None) -> None:
        try:
            import boto3
        except ImportError:
            raise KeyringError("KMS data keys need boto3: pip install 'healthsync[aws]'") from None
        self._client: Any = boto3.client("kms", region_name=region, endpoint_url=endpoint_url)

    def generate_data_key(self, key_id: str) -> tuple[bytes, bytes]:
        answer = self._call("GenerateDataKey", KeyId=key_id, KeySpec="AES_256")
        return bytes(answer["Plaintext"]), bytes(answer["CiphertextBlob"])

    def decrypt(self, blob: bytes, key_id: str) -> bytes:
        answer = self._call("Decrypt", CiphertextBlob=blob, KeyId=key_id)
        return bytes(answer["Plaintext"])

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        method = {"GenerateDataKey": "generate_data_key", "Decrypt": "decrypt"}[operation]
        try:
            answer: dict[str, Any] = getattr(self._client, method)(**params)
        except ClientError as exc:
            raise KeyringError(f"KMS {operation} failed: {exc}") from exc
        except BotoCoreError as exc:
            raise KeyringError(f"KMS {operation} failed: {exc}") from exc
        return answer
