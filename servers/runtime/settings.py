"""Settings for every server and command, from ``SUPPORTMESH_*`` variables or a ``.env`` file.

Built once in ``main()`` (or a test fixture) and passed down; never read at import time. A
backend whose URL is unset runs embedded under ``data_dir`` (see ``backends.py``).
"""

from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.roles import Role
from schemas.ticketing import SlaPolicy


class Settings(BaseSettings):
    # An empty variable is an unset one: compose files pass optional settings as ${VAR:-}.
    model_config = SettingsConfigDict(
        env_prefix="SUPPORTMESH_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    data_dir: Path = Field(Path(".supportmesh"), description="Where embedded engines keep data.")
    postgres_url: str | None = Field(None, description="postgresql://… ; unset = embedded.")
    redis_url: str | None = Field(None, description="redis://… ; unset = embedded Valkey.")
    kafka_bootstrap: str | None = Field(None, description="host:port ; unset = embedded Tansu.")
    qdrant_url: str | None = Field(None, description="http://… ; unset = local mode on disk.")
    kafka_enable_idempotence: bool = Field(
        False, description="Use the idempotent producer (real Kafka only; Tansu lacks it)."
    )
    kafka_record_per_batch: bool = Field(
        False,
        description="Send one record per produce batch. Tansu, the embedded broker, gives a "
        "multi-record batch one offset instead of one per record, which makes consumers skip "
        "records; set automatically when Kafka is embedded.",
    )
    kafka_session_timeout_ms: int | None = Field(
        None,
        ge=1000,
        description="How long a consumer group waits for a silent member before giving its "
        "partitions to the others. Default: 6000 on the embedded broker (Tansu holds every "
        "join for half of it, so start-up waits that long), else aiokafka's 10000.",
    )

    host: str = Field("127.0.0.1", description="Interface the HTTP transport binds.")
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "localhost", "[::1]"],
        description="Host header values HTTP servers accept (DNS-rebinding protection).",
    )
    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1", "http://localhost", "http://[::1]"],
        description="Origin header values (scheme://host, any port) HTTP servers accept.",
    )
    max_message_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        description="The largest JSON-RPC message a server reads: an HTTP body (413 above it) "
        "or a stdio line (dropped above it).",
    )
    log_level: str = "INFO"
    actor: str = Field(
        "local-user", description="Who stdio and in-process calls act as (audit, approvals)."
    )
    role: Role = Field(
        Role.ADMIN,
        description="The role stdio and in-process calls have. Whoever can start the process "
        "can reach its databases, so admin by default; set agent to narrow an assistant.",
    )
    auth_signing_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="The HS256 key that signs and verifies bearer tokens (32+ characters); "
        "unset = a random key kept in <data_dir>/auth-signing-key, made on first use.",
    )
    auth_jwks_uri: str | None = Field(
        None,
        description="Verify tokens from an identity provider's JWKS (RS256) instead of the "
        "signing key; `supportmesh token issue` is then not used.",
    )
    auth_issuer: str = Field(
        "http://127.0.0.1:8700",
        description="The issuer (iss) tokens must carry; advertised as the authorization server.",
    )
    auth_audience: str = Field("supportmesh", description="The audience (aud) tokens must carry.")
    http_auth: bool = Field(
        True,
        description="Require a bearer token on HTTP. Off only for clients that cannot send "
        "one (the MCP conformance suite); the server then warns at start-up.",
    )

    outbox_poll_seconds: float = Field(
        1.0, gt=0, description="How often the outbox relay looks for events it was not told of."
    )
    sla_policy: SlaPolicy = Field(default_factory=SlaPolicy)
    embedding_model: str | None = Field(
        None,
        description="A model2vec model (a folder) that embeds text; unset = the static model "
        "shipped in servers/runtime/models/.",
    )
    worker_in_process: bool = Field(
        True,
        description="Servers run a Celery worker for their tasks in their own process; false: "
        "`supportmesh worker` runs them elsewhere (the knowledge server with Qdrant in local "
        "mode always runs its own). A process has one worker, for one environment.",
    )
    beat_in_process: bool = Field(
        True,
        description="Servers send their own periodic tasks (Celery beat in their process); "
        "false: one `supportmesh beat` sends every server's.",
    )
    task_visibility_timeout_seconds: int = Field(
        60,
        ge=2,
        description="A task taken by a worker that died is run again after this long. Keep it "
        "above the longest task's run time, or a slow task runs twice.",
    )
    approval_sweep_seconds: float = Field(
        30.0, gt=0, description="How often approvals past their expiry are marked expired."
    )
    session_ttl_seconds: int = Field(
        7 * 24 * 3600, ge=1, description="A session is dropped this long after its last turn."
    )
    session_max_turns: int = Field(
        200, ge=1, le=100_000, description="A session keeps its latest turns, this many."
    )
    session_idle_seconds: int = Field(
        1800, ge=1, description="A session with no turn for this long is summarised."
    )
    memory_sweep_seconds: float = Field(
        60.0, gt=0, description="How often idle sessions are looked for."
    )
    ingest_stale_seconds: int = Field(
        1800,
        ge=1,
        description="An article still waiting to be indexed this long after its task was sent "
        "gets its task sent again (looked for every half of this). Keep it above the longest "
        "wait a backlog of ingests may have, or queued tasks are sent twice.",
    )
    cache_ttl_seconds: int = Field(
        300, ge=1, description="How long a cached read (CRM customers, products) may live."
    )
    orchestrator_token: SecretStr | None = Field(
        None,
        description="The bearer token the orchestrator sends to the servers (an agent's, from "
        "your identity provider); unset: one is minted from the signing key, subject "
        "'orchestrator'.",
    )
    model: str | None = Field(
        None,
        description="The chat model the orchestrator decides with (with ANTHROPIC_API_KEY, "
        "default claude-sonnet-4-5; with model_base_url, the endpoint's model name).",
    )
    model_base_url: str | None = Field(
        None,
        description="An OpenAI-compatible endpoint (a local Ollama or vLLM, e.g. "
        "http://127.0.0.1:11434/v1); unset, and no ANTHROPIC_API_KEY: the offline policy.",
    )
    approval_threshold: Decimal = Field(
        Decimal("250"),
        ge=0,
        description="The orchestrator asks a human to approve a refund above this amount.",
    )
    approval_expires_seconds: int = Field(
        24 * 3600,
        ge=1,
        le=30 * 24 * 3600,
        description="An approval the orchestrator asks for expires undecided after this long; "
        "an expired one fails closed (no action, the ticket stays with a human).",
    )
    vip_lifetime_spend: Decimal = Field(
        Decimal("1500"),
        ge=0,
        description="Customers who spent this much are VIPs: any refund of theirs is approved "
        "by a human.",
    )
    mcp_urls: dict[str, str] = Field(
        default_factory=dict,
        description="The MCP URLs the orchestrator service reaches the servers at, as JSON "
        '({"ticketing": "http://host:8701/mcp", ...}); unset: those of the running '
        "`supportmesh up` in the data directory.",
    )
    orchestrator_concurrency: int = Field(
        8, ge=1, le=256, description="Tickets one orchestrator service runs at once."
    )
    orchestrator_consume_tickets: bool = Field(
        True,
        description="The orchestrator service starts a run for every ticket created on the "
        "ticketing server (customer.requests); false: only for tickets submitted to its "
        "POST /tickets. Approval decisions are followed either way.",
    )
    orchestrator_group: str = Field(
        "orchestrator",
        min_length=1,
        description="The orchestrator's Kafka consumer group: replicas in one group share "
        "the tickets.",
    )
    orchestrator_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where the orchestrator's Kafka consumer group starts the first time it "
        "runs (after that, at its committed offsets): earliest handles every ticket still on "
        "the topics; latest only those created from then on.",
    )
    checkpoint_retention_seconds: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="A resolved ticket's checkpoints are pruned to its last one this long "
        "after it was resolved.",
    )
    checkpoint_prune_seconds: float = Field(
        3600.0, gt=0, description="How often the checkpoint pruning task runs."
    )

    analytics_group: str = Field(
        "analytics",
        min_length=1,
        description="The analytics server's Kafka consumer group (replicas share the events).",
    )
    metrics_sample_seconds: float = Field(
        60.0,
        gt=0,
        description="How often every server publishes a metrics sample (tool calls and errors "
        "by tool, outbox backlog) on system.analytics.",
    )
    sla_scan_seconds: float = Field(
        60.0, gt=0, description="How often tickets are scanned for breached SLA clocks."
    )
    approval_warning_seconds: int = Field(
        3600,
        ge=0,
        description="Approvers are reminded of a pending approval this long before it expires "
        "(0: no reminder).",
    )
    notifications_group: str = Field(
        "notifications",
        min_length=1,
        description="The Kafka consumer group that hands notifications.outbound to delivery.",
    )
    smtp_url: str | None = Field(
        None,
        description="Deliver notifications by mail: smtp://[user:password@]host[:port] "
        "(STARTTLS when the server offers it) or smtps://… (TLS from the start).",
    )
    smtp_from: str = Field(
        "SupportMesh <support@supportmesh.localhost>", description="The sender of notifications."
    )
    webhook_url: str | None = Field(
        None,
        description="Deliver notifications as JSON POSTs to this URL, signed with "
        "webhook_secret (header SupportMesh-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "
        "'<t>.<body>'>).",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        min_length=16,
        description="The key webhook bodies are signed with; unset = a random key kept in "
        "<data_dir>/webhook-secret, made on first use.",
    )
    notifications_dir: Path | None = Field(
        None,
        description="With neither smtp_url nor webhook_url, notifications are written here as "
        ".eml files; unset = <data_dir>/outbox.",
    )
    notify_max_attempts: int = Field(
        8,
        ge=1,
        le=100,
        description="A notification that failed this many times is dead-lettered "
        "(`supportmesh notifications dead` lists them, `... retry` sends them again).",
    )
    notify_retry_seconds: float = Field(
        2.0,
        gt=0,
        description="The first retry's delay; each next one doubles it (with jitter), up to "
        "an hour.",
    )
    notify_approvers: list[str] = Field(
        default_factory=lambda: ["approvers@supportmesh.localhost"],
        description="Who is told that an approval is waiting or about to expire.",
    )
    notify_team: str = Field(
        "support@supportmesh.localhost",
        description="Who is told of a breached SLA on a ticket whose assignee is not an "
        "address (or that has none).",
    )


DEFAULT_PORTS = {"postgresql": 5432, "postgres": 5432, "redis": 6379, "http": 80, "https": 443}


def place(url: str) -> str:
    """Where ``url`` points, without credentials or options, spelled one way: ``host:port/path``
    with the scheme's default port when none is given and no trailing slash.

    Task queues and cache keys are named from it, so a server and a worker given the same
    database in two spellings still meet.
    """
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    return f"{parts.hostname}:{port}{parts.path.rstrip('/')}"
