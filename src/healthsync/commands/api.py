"""`healthsync api`: the REST and FHIR API under uvicorn."""

from __future__ import annotations

import argparse
import ssl

from healthsync.commands.base import Subparsers, settings_from

# How long requests in flight may finish after SIGTERM.
SHUTDOWN_GRACE_S = 5


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from healthsync.api.app import create_app
    from healthsync.api.server import StoppableServer
    from healthsync.logs import setup_logging

    settings = settings_from(args)
    if args.host:
        settings.api.host = args.host
    if args.port is not None:
        settings.api.port = args.port
    setup_logging("api", settings.log_level)
    app = create_app(settings)
    ssl_context_factory = None
    if settings.api.tls_enabled:
        from healthsync.security.tls import server_context

        # Built before serving, so a missing certificate is one clear error, not a traceback;
        # uvicorn's own context could not be held to the TLS 1.3 policy.
        context = server_context(settings, "api")

        def ssl_context_factory(*_: object) -> ssl.SSLContext:
            return context

    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        # Forwarding headers are read by the audit, and only from api.trusted_proxies.
        proxy_headers=False,
        ssl_context_factory=ssl_context_factory,
        # Past this after SIGTERM, requests still running are cancelled and shutdown runs.
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    StoppableServer(config, app.state.feed.close).run()
    return 0


def register(sub: Subparsers) -> None:
    api = sub.add_parser(
        "api", help="run the REST API (HTTPS with tls.dir's api certificate by default)"
    )
    api.add_argument("--host", help="listen address (default 127.0.0.1)")
    api.add_argument("--port", type=int, help="listen port (default 8000)")
    api.set_defaults(func=cmd_api)
