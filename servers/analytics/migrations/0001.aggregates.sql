-- What the analytics server builds from events. Every table here is derived: `supportmesh
-- analytics rebuild` empties them all and replays the servers' outboxes.

-- Every event applied, by id: a redelivered one finds itself here and changes nothing.
CREATE TABLE consumed_events (
    event_id   uuid PRIMARY KEY,
    topic      text NOT NULL,
    type       text NOT NULL,
    source     text NOT NULL,
    at         timestamptz NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX consumed_events_at ON consumed_events (at);

-- Tickets as the events tell them.
CREATE TABLE tickets (
    ticket_id         bigint PRIMARY KEY,
    created_at        timestamptz,
    channel           text,
    priority          text,
    category          text,
    first_response_at timestamptz,
    solved_at         timestamptz,
    reopens           integer NOT NULL DEFAULT 0
);
CREATE INDEX tickets_first_response ON tickets (first_response_at);
CREATE INDEX tickets_solved ON tickets (solved_at);

-- What happened to tickets, when: one row per creation, solve and reopen.
CREATE TABLE ticket_happenings (
    event_id  uuid PRIMARY KEY,
    ticket_id bigint NOT NULL,
    happening text NOT NULL CHECK (happening IN ('created', 'solved', 'reopened')),
    at        timestamptz NOT NULL
);
CREATE INDEX ticket_happenings_at ON ticket_happenings (at);

CREATE TABLE sla_breaches (
    ticket_id   bigint NOT NULL,
    clock       text NOT NULL,
    priority    text,
    due_at      timestamptz,
    breached_at timestamptz NOT NULL,
    assignee    text,
    PRIMARY KEY (ticket_id, clock)
);
CREATE INDEX sla_breaches_at ON sla_breaches (breached_at);

-- Writes on agent.actions: the servers' writes and the orchestrator's tool calls.
CREATE TABLE writes (
    event_id uuid PRIMARY KEY,
    at       timestamptz NOT NULL,
    source   text NOT NULL,
    type     text NOT NULL,
    tool     text,
    actor    text,
    outcome  text NOT NULL
);
CREATE INDEX writes_at ON writes (at);

-- Tool calls from the servers' metrics samples: one row per (sample, tool, outcome).
CREATE TABLE tool_calls (
    event_id uuid NOT NULL,
    at       timestamptz NOT NULL,
    server   text NOT NULL,
    tool     text NOT NULL,
    outcome  text NOT NULL,
    calls    integer NOT NULL,
    PRIMARY KEY (event_id, tool, outcome)
);
CREATE INDEX tool_calls_at ON tool_calls (at);

CREATE TABLE outbox_backlog (
    server text PRIMARY KEY,
    at     timestamptz NOT NULL,
    unsent integer NOT NULL
);

CREATE TABLE approvals (
    approval_id  text PRIMARY KEY,
    action_tool  text,
    requested_by text,
    requested_at timestamptz,
    status       text NOT NULL,
    ended_at     timestamptz  -- decided or expired
);
CREATE INDEX approvals_requested ON approvals (requested_at);
CREATE INDEX approvals_ended ON approvals (ended_at);
