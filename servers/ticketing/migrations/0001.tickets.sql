-- Tickets, their comments and their status history.
CREATE TABLE tickets (
    id                 bigserial PRIMARY KEY,
    subject            text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    description        text NOT NULL,
    status             text NOT NULL
                       CHECK (status IN ('new', 'open', 'pending', 'solved', 'closed')),
    priority           text NOT NULL CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    channel            text NOT NULL CHECK (channel IN ('email', 'chat', 'phone', 'web', 'api')),
    customer_id        text,
    requester_email    text,
    assignee           text,
    tags               text[] NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    first_responded_at timestamptz,
    solved_at          timestamptz,
    closed_at          timestamptz,
    search             tsvector GENERATED ALWAYS AS (
                           setweight(to_tsvector('english', subject), 'A')
                           || setweight(to_tsvector('english', description), 'B')
                       ) STORED
);
CREATE INDEX tickets_search ON tickets USING gin (search);
CREATE INDEX tickets_tags ON tickets USING gin (tags);
CREATE INDEX tickets_created ON tickets (created_at DESC, id DESC);
CREATE INDEX tickets_status ON tickets (status, created_at DESC);
CREATE INDEX tickets_customer ON tickets (customer_id, created_at DESC);
CREATE INDEX tickets_assignee ON tickets (assignee, created_at DESC);

CREATE TABLE comments (
    id         bigserial PRIMARY KEY,
    ticket_id  bigint NOT NULL REFERENCES tickets (id),
    author     text NOT NULL,
    body       text NOT NULL,
    public     boolean NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX comments_ticket ON comments (ticket_id, id);

CREATE TABLE status_history (
    id          bigserial PRIMARY KEY,
    ticket_id   bigint NOT NULL REFERENCES tickets (id),
    from_status text,
    to_status   text NOT NULL,
    actor       text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX status_history_ticket ON status_history (ticket_id, id);
