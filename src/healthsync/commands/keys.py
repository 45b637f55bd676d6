"""`healthsync keys`: the keyring that seals PHI at rest."""

from __future__ import annotations

import argparse
from pathlib import Path

from healthsync.commands.base import Subparsers, settings_from
from healthsync.config import CryptoSettings, Settings


def cmd_keys(args: argparse.Namespace) -> int:
    """Create a keyring, rotate its active key, or retire an old key."""
    from healthsync.security.codec import key_service
    from healthsync.security.keyring import Keyring, KeyringError
    from healthsync.security.rotation import keyring_lock

    crypto = settings_from(args).crypto
    if args.keyring is not None:
        crypto.keyring_file = args.keyring
    if args.kms_key_id is not None:
        crypto.kms_key_id = args.kms_key_id
    path = crypto.keyring_file
    kms = key_service(crypto)
    if args.action == "init":
        if path.exists():
            raise KeyringError(f"{path} exists already; rotate its key instead")
        ring = Keyring.generate(kms, crypto.kms_key_id)
        done = f"created {path} with active key {ring.active}"
        ring.save(path)
    elif args.action == "rewrap":
        return _rewrap(settings_from(args), crypto)
    else:
        # Under the lock the stages take to rotate automatically: one new key, not two.
        with keyring_lock(path):
            ring = Keyring.load(path, kms)
            if args.action == "rotate":
                done = f"active key is now {ring.rotate(kms)}; older keys still decrypt"
            elif args.key_id is None:
                raise KeyringError("retire needs the KEY_ID to retire")
            else:
                from healthsync.keyring_archive import refuse_if_archived
                from healthsync.keyring_jobs import refuse_if_job_files
                from healthsync.keyring_redis import refuse_if_in_use

                refuse_if_in_use(settings_from(args), crypto, args.key_id)
                refuse_if_archived(settings_from(args), crypto, args.key_id)
                refuse_if_job_files(settings_from(args), args.key_id)
                ring.retire(args.key_id)
                done = f"retired {args.key_id}: data sealed with it can no longer be read"
            ring.save(path)
    source = f" (KMS key {ring.kms_key_id})" if ring.kms_key_id else ""
    print(done + source)
    readable = ", ".join(sorted(ring.keys))
    retired = ", ".join(ring.retired) or "none"
    print(f"keys: {readable}; active: {ring.active}; retired: {retired}")
    print("restart the running stages to use the changed keyring")
    return 0


def _rewrap(settings: Settings, crypto: CryptoSettings) -> int:
    """Redis (when encryption at rest is on), the archive, then the jobs' output files;
    1 if anything was left."""
    from healthsync.keyring_archive import rewrap_archive
    from healthsync.keyring_jobs import rewrap_job_files
    from healthsync.keyring_redis import rewrap_redis

    if crypto.enabled:
        redis = rewrap_redis(settings, crypto)
    else:
        redis = 0
        print("encryption at rest is off (crypto.enabled): nothing in Redis to reseal")
    archive = _left("archive objects", rewrap_archive(settings, crypto))
    return max(redis, archive, _left("job output files", rewrap_job_files(settings, crypto)))


def _left(what: str, failed: list[tuple[str, str]]) -> int:
    """Name what could not be rewritten, and why; the exit status: 1 if anything."""
    if not failed:
        return 0
    print(f"{len(failed)} {what} could not be rewritten; left as they are:")
    for location, reason in failed:
        print(f"  {location}: {reason}")
    return 1


def register(sub: Subparsers) -> None:
    keys = sub.add_parser(
        "keys",
        help="manage the keyring for encryption at rest",
        description="The AES-256 keys that seal PHI in Redis, Kafka and the jobs' output "
        "files and wrap the data keys of the encrypted archive (HEALTHSYNC_ARCHIVE_URL). "
        "`init` creates the keyring file (mode 0600), `rotate` adds a new active key (older "
        "keys keep decrypting what they sealed; nothing is re-encrypted), `rewrap` seals "
        "everything in Redis (HEALTHSYNC_REDIS_URL) again under the active key, rewrites every "
        "archived object whose data key an older key wraps, and seals every job output file "
        "(HEALTHSYNC_JOBS_OUTPUT_URL) an older key sealed again (a job that is running "
        "meanwhile is left for the next rewrap), `retire KEY_ID` deletes a key, and refuses "
        "while Redis still holds a value it sealed, an archived object still depends on it, "
        "or a job output file is still sealed under it. Kafka topics keep values sealed with "
        "a key until their retention ends. With --kms-key-id the keys are AWS KMS data keys "
        "and the file holds only their encrypted blobs; with HEALTHSYNC_CRYPTO_KMS_KEY_ID the "
        "archive's data keys are wrapped by that KMS key instead, and `rewrap` moves objects "
        "written under a keyring key to it.",
    )
    keys.add_argument("action", choices=["init", "rotate", "rewrap", "retire"])
    keys.add_argument("key_id", nargs="?", metavar="KEY_ID", help="the key to retire")
    keys.add_argument(
        "--keyring", type=Path, help="keyring file (default HEALTHSYNC_CRYPTO_KEYRING_FILE)"
    )
    keys.add_argument("--kms-key-id", help="KMS key for new data keys (init)")
    keys.set_defaults(func=cmd_keys)
