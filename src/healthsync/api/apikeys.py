"""API keys for services: random bearer tokens, of which only a SHA-256 hash is stored.

The keys file is JSON, ``{"keys": [{"name", "role", "sha256", "created"}]}``,
mode 0600, and replaced atomically on every change. A key is 32 random bytes,
so a plain SHA-256 of it cannot be reversed or guessed; the key itself is
printed once by ``healthsync apikey create`` and never written anywhere.

The API re-reads the file when it changes, so a revoked key stops working at
once, without a restart.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from healthsync.api.permissions import ROLES
from healthsync.errors import HealthSyncError

KEY_PREFIX = "hsk_"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ApiKeyError(HealthSyncError):
    """The keys file cannot be used, or a key operation was refused."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    role: str
    sha256: str
    created: str


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """One keys file: create, list, revoke, and look a presented key up."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_digest: dict[str, ApiKey] = {}

    def load(self) -> list[ApiKey]:
        """Every key in the file; none when the file does not exist yet."""
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ApiKeyError(f"cannot read the API keys file {self.path}: {exc}") from None
        if info.st_mode & 0o077:
            raise ApiKeyError(
                f"the API keys file {self.path} is readable by other users "
                f"(mode {stat.filemode(info.st_mode)}); run: chmod 600 {self.path}"
            )
        try:
            doc = orjson.loads(self.path.read_bytes())
            return [ApiKey(**entry) for entry in doc["keys"]]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ApiKeyError(f"the API keys file {self.path} is not valid: {exc}") from None

    def create(self, name: str, role: str) -> str:
        """Add a key and return it; the caller shows it once, it is not kept."""
        if not name or len(name) > 64 or not set(name) <= _NAME_CHARS:
            raise ApiKeyError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        if role not in ROLES:
            raise ApiKeyError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
        keys = self.load()
        if any(k.name == name for k in keys):
            raise ApiKeyError(f"a key named {name!r} exists; revoke it first or choose another")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._save([*keys, ApiKey(name, role, digest(key), created)])
        return key

    def revoke(self, name: str) -> bool:
        keys = self.load()
        kept = [k for k in keys if k.name != name]
        if len(kept) == len(keys):
            return False
        self._save(kept)
        return True

    def lookup(self, key: str) -> ApiKey | None:
        """The stored key a presented one hashes to; the file is re-read when it changed."""
        with self._lock:
            try:
                info = self.path.stat()
                stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
            except FileNotFoundError:
                stamp = None
            if stamp != self._stamp:
                self._by_digest = {k.sha256: k for k in self.load()}
                self._stamp = stamp
            return self._by_digest.get(digest(key))

    def _save(self, keys: list[ApiKey]) -> None:
        doc: dict[str, Any] = {"keys": [asdict(k) for k in keys]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        temporary.replace(self.path)


LOCAL_KEY_NAME = "local-admin"


def ensure_local_key(store: ApiKeyStore, key_file: Path) -> None:
    """The admin key `healthsync up` keeps in its run directory, created on first start.

    The key is written to `key_file` (0600) so a person at the same machine can
    use the API; it is replaced when either the file or its stored hash is gone.
    """
    if key_file.exists() and any(k.name == LOCAL_KEY_NAME for k in store.load()):
        return
    store.revoke(LOCAL_KEY_NAME)
    key = store.create(LOCAL_KEY_NAME, "admin")
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, key.encode() + b"\n")
    finally:
        os.close(fd)
