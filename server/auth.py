"""JWT identities: signing, verification and the per-token room allowance."""

from __future__ import annotations

import fnmatch
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from server.errors import ErrorCode, HuddleError

log = logging.getLogger(__name__)

ALGORITHM = "HS256"
RESERVED_USER_PREFIX = "agent:"
"""User ids of this form belong to Huddle's agents, such as the in-room assistant."""
SECRET_FILE = "jwt-secret"


@dataclass(frozen=True)
class Identity:
    """The verified user behind a connection or an HTTP request."""

    user_id: str
    name: str
    roles: tuple[str, ...] = ()
    room_patterns: tuple[str, ...] | None = None
    """Glob patterns from the token's `rooms` claim; None allows every room."""

    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def may_join(self, room: str) -> bool:
        if self.room_patterns is None:
            return True
        return any(fnmatch.fnmatchcase(room, pattern) for pattern in self.room_patterns)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def public(self) -> dict[str, str]:
        return {"id": self.user_id, "name": self.name}


def load_or_create_secret(configured: str | None, data_dir: Path) -> str:
    """Return the configured secret, or one kept in `data_dir`, creating it on first use."""
    if configured:
        return configured

    path = data_dir / SECRET_FILE
    if path.exists():
        return path.read_text().strip()

    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    log.info("created a JWT secret in %s", path)
    return secret


def issue_token(
    secret: str,
    user_id: str,
    *,
    name: str | None = None,
    roles: list[str] | None = None,
    rooms: list[str] | None = None,
    ttl_seconds: int = 24 * 3600,
) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id,
        "name": name or user_id,
        "roles": roles or [],
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if rooms is not None:
        claims["rooms"] = rooms
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str, token: object) -> Identity:
    """Decode and check a token; raise HuddleError(UNAUTHORIZED) with the reason when it fails."""
    if not isinstance(token, str) or not token:
        raise HuddleError(
            ErrorCode.UNAUTHORIZED,
            "missing token: send it as a Bearer header, the huddle_token cookie or ?token=, "
            "or with Socket.IO as auth.token",
        )

    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise HuddleError(ErrorCode.UNAUTHORIZED, "token expired: request a new one") from exc
    except jwt.InvalidTokenError as exc:
        raise HuddleError(ErrorCode.UNAUTHORIZED, f"invalid token: {exc}") from exc

    return _identity_from_claims(claims)


def _identity_from_claims(claims: dict[str, object]) -> Identity:
    user_id = claims.get("sub")
    if not isinstance(user_id, str) or not user_id:
        raise HuddleError(ErrorCode.UNAUTHORIZED, "invalid token: `sub` must be a non-empty string")
    if user_id.startswith(RESERVED_USER_PREFIX):
        reserved = f"invalid token: user ids starting with {RESERVED_USER_PREFIX!r} are reserved for agents"
        raise HuddleError(ErrorCode.UNAUTHORIZED, reserved)

    name = claims.get("name")
    roles = claims.get("roles") or []
    rooms = claims.get("rooms")
    if not isinstance(roles, list) or not all(isinstance(role, str) for role in roles):
        raise HuddleError(ErrorCode.UNAUTHORIZED, "invalid token: `roles` must be a list of strings")
    if rooms is not None and (not isinstance(rooms, list) or not all(isinstance(pattern, str) for pattern in rooms)):
        raise HuddleError(ErrorCode.UNAUTHORIZED, "invalid token: `rooms` must be a list of globs")

    return Identity(
        user_id=user_id,
        name=name if isinstance(name, str) and name else user_id,
        roles=tuple(roles),
        room_patterns=tuple(rooms) if rooms is not None else None,
    )
