"""The embedded redis-server: TLS 1.3 only, one ACL user, optionally kept on disk."""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from healthsync.errors import HealthSyncError, MissingBinaryError
from healthsync.stack.ports import free_port
from healthsync.stack.process import (
    LOCALHOST,
    TLS_CIPHERSUITE,
    TLS_PROTOCOL,
    Launch,
    ServerTls,
    Service,
    spawn,
)

_REDIS_START_TIMEOUT_S = 10.0
# How far the append-only file grows past its size after a rewrite before the next, in %:
# a rewrite costs in proportion to the data, so at 200 (the file tripled) rather than
# Redis's 100 (doubled) there is half the rewriting per byte written, for a file on disk
# up to three times its rewritten size (docs/OPERATIONS.md, "Redis durability").
_AOF_REWRITE_PERCENTAGE = 200


@dataclass(frozen=True)
class RedisUser:
    """The one ACL user of an embedded redis-server; the default user is switched off."""

    name: str
    password: str

    def acl(self) -> str:
        # Only the password's SHA-256 goes into the file.
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return f"user default off\nuser {self.name} on #{digest} ~* &* +@all\n"


@dataclass(frozen=True)
class RedisDisk:
    """Where the embedded Redis keeps its data, and how often its append-only file is synced.

    `appendfsync` None: no append-only file, only what a SAVE writes.
    """

    data_dir: Path
    appendfsync: Literal["always", "everysec", "no"] | None = "everysec"


def start_redis(
    address: tuple[str, int] = (LOCALHOST, 0),
    log_dir: Path | None = None,
    tls: ServerTls | None = None,
    disk: RedisDisk | None = None,
    user: RedisUser | None = None,
) -> Service:
    """Start a private redis-server on `address` (host, port; port 0 picks a free
    one); returns once it accepts connections.

    Without `disk` it keeps nothing on disk; with it, a restart on the same
    directory loads what was kept. With `tls` it listens with TLS 1.3 only on
    `port` and on no plain port.
    With `user` only that user, with its password, may connect (the ACL file,
    mode 0600, goes into `log_dir`).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise MissingBinaryError("redis-server", "sudo apt-get install redis-server")
    host, port = address
    port = port or free_port(host)
    argv = [binary, "--bind", host, "--port", str(port)]
    if tls is not None:
        argv = [
            *(binary, "--bind", host, "--port", "0", "--tls-port", str(port)),
            *("--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)),
            *("--tls-ca-cert-file", str(tls.ca)),
            *("--tls-auth-clients", "yes" if tls.client_certs == "required" else "optional"),
            *("--tls-protocols", TLS_PROTOCOL, "--tls-ciphersuites", TLS_CIPHERSUITE),
        ]
    argv += ["--save", "", "--protected-mode", "yes", *_persistence_args(disk)]
    if user is not None:
        if log_dir is None:
            raise HealthSyncError(
                "an embedded Redis with a user needs a directory for its ACL file"
            )
        # Absolute: redis-server reads it after changing into its --dir.
        acl = (log_dir / "redis-users.acl").resolve()
        fd = os.open(acl, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(user.acl())
        argv += ["--aclfile", str(acl)]
    service = spawn("redis", argv, (host, port), Launch(log_dir, _REDIS_START_TIMEOUT_S))
    service.tls = tls is not None
    return service


def _persistence_args(disk: RedisDisk | None) -> list[str]:
    if disk is None:
        return ["--appendonly", "no"]
    # The values are sealed (see security/codec), but the files hold them all: owner only.
    disk.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    disk.data_dir.chmod(0o700)
    # The sealed values do not compress: LZF over them saved 0.02% of a 364 MB file and
    # doubled the time the append-only file's rewrite child took (2.8 s against 1.4 s for
    # 600 MB in memory), a core taken from the pipeline at each rewrite. With
    # encryption at rest off the values would compress; sealing is the default.
    args = ["--dir", str(disk.data_dir.resolve()), "--rdbcompression", "no"]
    if disk.appendfsync is None:
        return [*args, "--appendonly", "no"]
    return [
        *args,
        *("--appendonly", "yes", "--appendfsync", disk.appendfsync),
        *("--auto-aof-rewrite-percentage", str(_AOF_REWRITE_PERCENTAGE)),
    ]
