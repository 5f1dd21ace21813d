"""The `huddle` command: serve, migrate, token."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from aiohttp import web

from server.auth import issue_token, load_or_create_secret
from server.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="huddle", description="Huddle realtime server")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the Socket.IO and HTTP server")
    serve.add_argument("--host", help="address to listen on (default: HUDDLE_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: HUDDLE_PORT or 8000)")

    commands.add_parser("worker", help="claim queued agent runs and execute them (needs REDIS_URL)")

    commands.add_parser("migrate", help="bring the database schema to the newest revision")

    token = commands.add_parser("token", help="print a signed token for local use")
    token.add_argument("user", help="the user id (the token's `sub`)")
    token.add_argument("--name", help="display name (default: the user id)")
    token.add_argument("--role", action="append", default=[], help="a role; repeat for several")
    token.add_argument("--rooms", action="append", help="a room glob the user may join; repeat for several")
    token.add_argument("--ttl", type=int, default=24 * 3600, help="lifetime in seconds (default: 86400)")

    args = parser.parse_args(argv)
    settings = Settings()
    _configure_logging(settings.log_level)

    if args.command == "serve":
        _serve(settings, args.host, args.port)
    elif args.command == "worker":
        _work(settings)
    elif args.command == "migrate":
        asyncio.run(_migrate(settings))
    elif args.command == "token":
        secret = load_or_create_secret(settings.jwt_secret, settings.data_dir)
        print(issue_token(secret, args.user, name=args.name, roles=args.role, rooms=args.rooms, ttl_seconds=args.ttl))


def _configure_logging(level: str) -> None:
    # Logs go to stderr so that `huddle token` prints nothing but the token on stdout.
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # trafilatura reports every page it cannot extract at ERROR; the report agent handles that.
    logging.getLogger("trafilatura").setLevel(logging.CRITICAL)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    uvloop.install()


def _serve(settings: Settings, host: str | None, port: int | None) -> None:
    from server.app import create_app

    _install_uvloop()
    app = create_app(settings)
    web.run_app(
        app,
        host=host or settings.host,
        port=port or settings.port,
        access_log=None,
        shutdown_timeout=10,
        print=lambda text: logging.getLogger("huddle").info(text.strip()),
    )


def _work(settings: Settings) -> None:
    from agents.worker import run_worker

    _install_uvloop()
    asyncio.run(run_worker(settings))


async def _migrate(settings: Settings) -> None:
    from models.database import create_engine, migrate

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


if __name__ == "__main__":
    main()
