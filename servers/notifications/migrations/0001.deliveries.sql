-- One row per notification.requested event (its id is the dedupe key) and what became of it.
CREATE TABLE deliveries (
    event_id        uuid PRIMARY KEY,
    kind            text,          -- NULL when the event's data did not validate
    subject         text NOT NULL, -- the event's subject, e.g. 'ticket/42'
    recipients      text[] NOT NULL,
    event           jsonb NOT NULL,
    channel         text CHECK (channel IN ('smtp', 'webhook', 'file')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'dead')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,   -- when the retry waiting in Celery is due (pending only)
    sent_at         timestamptz,
    CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX deliveries_dead ON deliveries (created_at) WHERE status = 'dead';
CREATE INDEX deliveries_pending ON deliveries (created_at) WHERE status = 'pending';
