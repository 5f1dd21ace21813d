"""All of Huddle's settings, read from the environment in one place."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.clients import parse_networks


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Settings(BaseSettings):
    """Huddle's configuration.

    Every field is read from the environment variable of the same name in upper case with the
    `HUDDLE_` prefix (`HUDDLE_PORT`), except those given an explicit alias
    (`DATABASE_URL`, `OPENAI_API_KEY`, `OPENAI_BASE_URL`).
    """

    model_config = SettingsConfigDict(env_prefix="HUDDLE_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000

    data_dir: Path = Field(default=Path("data"))
    """Directory for the SQLite database and the generated JWT secret."""

    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    """SQLAlchemy async URL; defaults to SQLite in `data_dir`. PostgreSQL: `postgresql+asyncpg://`."""

    redis_url: str | None = Field(default=None, alias="REDIS_URL")
    """When set, broadcasts, presence and run events are shared with every other process
    through this Redis server (`redis://host:6379/0`)."""

    node_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    """This process's id in shared presence; unique per process by default."""

    presence_ttl_seconds: float = 10.0
    """With Redis: seconds without a heartbeat after which a process's users go offline."""

    presence_heartbeat_seconds: float = 2.0
    """With Redis: seconds between heartbeats and between checks for gone processes."""

    jwt_secret: str | None = None
    """HS256 signing secret. When unset, a random one is created once in `data_dir/jwt-secret`."""

    cors_origins: Annotated[list[str], NoDecode] = ["http://localhost:3000"]
    """Origins allowed to connect from a browser: a JSON list or a comma-separated string, `*` for any."""

    migrate_on_start: bool = True

    max_message_bytes: int = 16 * 1024
    """Maximum size of a chat message's text, in bytes of UTF-8."""

    max_payload_bytes: int = 1_000_000
    """Maximum size of one Socket.IO packet (Engine.IO `max_http_buffer_size`), in bytes."""

    rate_limit_events_per_second: float = 20.0
    """Sustained client events per second allowed on one connection."""

    rate_limit_burst: int = 60
    """Events a connection may send at once before the rate limit applies."""

    connect_rate_per_second: float = 10.0
    """New Socket.IO connections per second allowed from one client address."""

    connect_burst: int = 50
    """Connections one address may open at once before its connection rate applies."""

    trusted_proxies: Annotated[list[str], NoDecode] = []
    """Addresses or CIDR blocks of the proxies (nginx) whose X-Forwarded-For is believed, for the
    client addresses in logs and connection limits; comma-separated. Empty: the peer address."""

    history_page_max: int = 200
    join_missed_max: int = 100
    """Maximum messages in a `room:join` ack; past it the ack sets `has_more`."""

    ws_compression: bool = False
    """Negotiate permessage-deflate on websockets. Off by default, because each compressed
    connection keeps zlib state of about 100 KB on the server."""

    commit_batch_max: int = 512
    """Writes grouped into one database transaction at most."""

    agent_concurrency: int = 4
    """Agent runs executing at once in this process; more runs wait in a queue."""

    fetch_timeout_seconds: float = 10.0
    fetch_max_bytes: int = 2_000_000
    fetch_max_redirects: int = 5
    fetch_allow_private: bool = False
    """Let the report agent fetch loopback, private and link-local addresses. Off by default so
    that users cannot point the server at internal services; turn it on for local development."""

    sse_heartbeat_seconds: float = 15.0

    openai_api_key: str | None = Field(default=None, alias="OPENAI_API_KEY")
    openai_base_url: str | None = Field(default=None, alias="OPENAI_BASE_URL")
    llm_model: str = "gpt-4o-mini"
    """The model agents use unless they name another."""

    llm_request_timeout_seconds: float = 60.0
    """Maximum wait for the model's first byte and between two chunks of its stream."""

    llm_max_retries: int = 3
    """Retries of a model request that failed before its first token (429, 5xx, network)."""

    llm_retry_max_wait_seconds: float = 30.0
    """Maximum pause before a retry, even when the server's Retry-After requests more."""

    agent_run_timeout_seconds: float = 600.0
    """Time budget of one run, from its start to its end, queueing excluded."""

    agent_max_runs: int = 100
    """Runs queued or running in this process at once; more are rejected with `rate_limited`."""

    agent_max_runs_per_user: int = 5
    """Runs one user may have queued or running at once."""

    agent_max_input_bytes: int = 900_000
    """Largest run input, as JSON in UTF-8 bytes; below `max_payload_bytes` so that it is the
    limit a client meets."""

    agent_plugins: Annotated[list[str], NoDecode] = []
    """Extra agent classes as `package.module:ClassName`, comma-separated, besides the
    `huddle.agents` entry points."""

    agent_execution: Literal["inline", "workers"] = "inline"
    """Execution mode of runs: in the serving process (`inline`), or in `huddle worker` processes
    (`workers`, which needs REDIS_URL for their events to reach subscribers)."""

    run_lease_seconds: float = 15.0
    """Lease on a run, in seconds: after that long without a renewal the run is failed or, with
    workers, taken over. The owner renews it every third of it."""

    worker_poll_seconds: float = 1.0
    """How often an idle worker checks the database for runs, besides Redis job notices."""

    delta_flush_seconds: float = 0.1
    """How long streamed deltas may wait in memory before they are written in one transaction."""

    assistant_names: Annotated[list[str], NoDecode] = ["assistant"]
    """Names that, mentioned as `@name` in a message, start an in-room assistant reply."""

    assistant_history_messages: int = 30
    """Recent room messages given to the assistant as context."""

    assistant_max_replies_per_room: int = 2
    """Replies streaming at once in one room; a mention beyond it gets no reply."""

    assistant_offline_delay_seconds: float = 0.03
    """Pause between the words of an offline reply, so that it streams like a model's."""

    log_level: str = "INFO"

    @field_validator("trusted_proxies", mode="after")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @field_validator("cors_origins", "assistant_names", "agent_plugins", "trusted_proxies", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            return json.loads(value)
        return [origin.strip() for origin in value.split(",") if origin.strip()]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'huddle.db').resolve()}"

    @property
    def llm_configured(self) -> bool:
        return bool(self.openai_api_key or self.openai_base_url)
