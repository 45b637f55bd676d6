"""`healthsync apikey`: the API keys services authenticate with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from healthsync.api.permissions import ROLES
from healthsync.commands.base import Subparsers, settings_from
from healthsync.errors import ConfigError


def cmd_apikey(args: argparse.Namespace) -> int:
    """Create, list or revoke the API keys services use; keys are stored hashed."""
    from healthsync.api.apikeys import ApiKeyStore

    path = args.keys_file or settings_from(args).auth.api_keys_file
    if path is None:
        raise ConfigError("no API keys file: set HEALTHSYNC_AUTH_API_KEYS_FILE or --keys-file")
    store = ApiKeyStore(path)
    if args.action == "create":
        key = store.create(args.name, args.role)
        print(key)
        print(
            f"API key {args.name!r} ({args.role}) added to {path}; it is shown only now.",
            file=sys.stderr,
        )
    elif args.action == "list":
        for entry in store.load():
            print(f"{entry.name}\t{entry.role}\t{entry.created}")
    elif not store.revoke(args.name):
        print(f"no API key named {args.name!r} in {path}", file=sys.stderr)
        return 1
    return 0


def register(sub: Subparsers) -> None:
    apikey = sub.add_parser(
        "apikey",
        help="manage the API keys services use (create, list, revoke)",
        description="API keys are bearer tokens for services, each with one role. The keys "
        "file (HEALTHSYNC_AUTH_API_KEYS_FILE, mode 0600) holds only their SHA-256 hashes; "
        "`create` prints the key once. A running API notices changes at once.",
    )
    apikey.add_argument("--keys-file", type=Path, help="the keys file (default from settings)")
    actions = apikey.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="add a key and print it (only this once)")
    create.add_argument("--name", required=True, help="who uses it, e.g. ward-dashboard")
    create.add_argument("--role", required=True, choices=list(ROLES))
    actions.add_parser("list", help="name, role and creation time of every key")
    revoke = actions.add_parser("revoke", help="remove a key; it stops working at once")
    revoke.add_argument("name")
    apikey.set_defaults(func=cmd_apikey)
