"""`healthsync certs`: the local PKI (CA, server and device certificates, CRL)."""

from __future__ import annotations

import argparse
from pathlib import Path

from healthsync.commands.base import Subparsers, settings_from


def cmd_certs(args: argparse.Namespace) -> int:
    """Create the local PKI, issue a device certificate, or revoke one."""
    from healthsync.security import certs, crl

    directory: Path = args.dir or settings_from(args).tls.dir
    if args.certs_command == "init":
        certs.init_pki(directory, hosts=args.host or ("localhost", "127.0.0.1"), force=args.force)
        print(f"CA, server certificates ({', '.join(certs.SERVICES)}) and CRL in {directory}")
    elif args.certs_command == "device" and args.csr is not None:
        csr = args.csr.read_bytes()
        print(
            certs.sign_device_csr(directory, args.device_id, csr, days=args.days, force=args.force)
        )
    elif args.certs_command == "device":
        cert, key = certs.issue_device(directory, args.device_id, days=args.days, force=args.force)
        print(f"{cert}\n{key}")
    else:
        crl.revoke_device(directory, args.device_id)
        print(f"{args.device_id} revoked; {certs.crl_path(directory)} updated")
    return 0


def register(sub: Subparsers) -> None:
    certs = sub.add_parser(
        "certs",
        help="create the local CA and certificates; issue and revoke device certificates",
        description="A local PKI for TLS: a CA, server certificates for ingest, api, redis "
        "and kafka, device client certificates and a CRL. Files are written 0600 and "
        "never replaced without --force.",
    )
    certs.add_argument("--dir", type=Path, help="where the PKI lives (default tls.dir: run/certs)")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    certs_init = certs_sub.add_parser("init", help="create the CA, server certificates, CRL")
    certs_init.add_argument(
        "--host",
        action="append",
        help="name or address the servers are reached by (repeat; default localhost and 127.0.0.1)",
    )
    certs_init.add_argument("--force", action="store_true", help="replace an existing PKI")
    certs_device = certs_sub.add_parser(
        "device",
        help="issue a device client certificate",
        description="Without --csr a key is made too, written beside the PKI directory "
        "(<dir>-device-keys/), never next to ca.key: for tests and demos. Production "
        "devices make their own key and send a CSR; only the certificate is written.",
    )
    certs_device.add_argument("device_id", metavar="DEVICE_ID")
    certs_device.add_argument(
        "--csr", type=Path, help="the device's PEM certificate signing request"
    )
    certs_device.add_argument("--days", type=int, default=365, help="validity (default 365)")
    certs_device.add_argument(
        "--force", action="store_true", help="replace the device's certificate"
    )
    certs_revoke = certs_sub.add_parser(
        "revoke", help="put a device's certificate on the CRL (ingest refuses it within 1 s)"
    )
    certs_revoke.add_argument("device_id", metavar="DEVICE_ID")
    certs.set_defaults(func=cmd_certs)
