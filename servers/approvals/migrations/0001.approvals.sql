-- Requests for a human decision on a risky action, and their decisions.
CREATE TABLE approvals (
    id               text PRIMARY KEY CHECK (id ~ '^apr_[0-9a-f]{32}$'),
    subject          text NOT NULL,
    action_tool      text NOT NULL,
    action_arguments jsonb NOT NULL,
    amount           numeric(14, 2) CHECK (amount >= 0),
    currency         text NOT NULL,
    reason           text NOT NULL,
    status           text NOT NULL
                     CHECK (status IN ('pending', 'approved', 'rejected', 'expired')),
    requested_by     text NOT NULL,
    requested_at     timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    decided_by       text,
    decided_at       timestamptz,
    comment          text,
    -- Separation of duties, kept by the database too: nobody decides their own request.
    CHECK (decided_by IS NULL OR decided_by <> requested_by),
    CHECK ((status = 'pending') = (decided_at IS NULL))
);
CREATE INDEX approvals_pending ON approvals (requested_at, id) WHERE status = 'pending';
CREATE INDEX approvals_due ON approvals (expires_at) WHERE status = 'pending';
CREATE INDEX approvals_subject ON approvals (subject, requested_at);
