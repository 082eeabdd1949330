-- SLA clocks found breached by the scan (ticketing.scan_sla): one row per ticket and clock, so
-- that each breach is announced once.
CREATE TABLE sla_breaches (
    ticket_id   bigint NOT NULL REFERENCES tickets (id),
    clock       text NOT NULL CHECK (clock IN ('first_response', 'resolution')),
    due_at      timestamptz NOT NULL,
    breached_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ticket_id, clock)
);
