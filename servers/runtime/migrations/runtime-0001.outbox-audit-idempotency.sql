-- Tables every server keeps in its own schema (search_path points there during migration).

-- Events committed with the state change that caused them; the relay publishes them to Kafka.
CREATE TABLE outbox (
    seq        bigserial PRIMARY KEY,
    id         uuid NOT NULL UNIQUE,
    topic      text NOT NULL,
    key        text NOT NULL,
    event      jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at    timestamptz
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;

-- Who did what, through which tool, when (DESIGN §7).
CREATE TABLE audit (
    id             bigserial PRIMARY KEY,
    at             timestamptz NOT NULL DEFAULT now(),
    actor          text NOT NULL,
    tool           text NOT NULL,
    arguments_hash text NOT NULL,
    subject        text,
    result         jsonb NOT NULL
);
CREATE INDEX audit_subject ON audit (subject, at);

-- The first result of each write, by idempotency key: a repeat returns it and changes nothing.
CREATE TABLE idempotency_keys (
    tool           text NOT NULL,
    key            text NOT NULL,
    arguments_hash text NOT NULL,
    result         jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tool, key)
);
