-- The orchestrator service's work: one row per ticket it handles (its thread's checkpoints are
-- LangGraph's tables in this schema). A row with `wake` set has work to do (start, resume,
-- replay); a row left 'running' by a runner that died is taken over by the next one.
CREATE TABLE runs (
    ticket_id       bigint PRIMARY KEY,
    status          text NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'running', 'waiting', 'resolved', 'failed')),
    wake            boolean NOT NULL DEFAULT true,
    resume_approval text,            -- the approval a decision arrived for, until a runner takes it
    replay_from     text,            -- a checkpoint an admin asked to run again from
    approval_id     text,            -- the approval the run waits for
    node            text,            -- the last node that finished
    trace_id        text NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    not_before      timestamptz,     -- a run that failed on an unavailable server waits until then
    error           text,
    submitted_by    text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    pruned_at       timestamptz      -- when its old checkpoints were dropped
);
CREATE INDEX runs_due ON runs (updated_at) WHERE wake OR status = 'running';
CREATE INDEX runs_to_prune ON runs (finished_at) WHERE status = 'resolved' AND pruned_at IS NULL;

-- Events from Kafka already applied: a redelivered event is a no-op.
CREATE TABLE consumed_events (
    event_id    uuid PRIMARY KEY,
    topic       text NOT NULL,
    consumed_at timestamptz NOT NULL DEFAULT now()
);

-- A ticket's progress events, in order, for its event stream.
CREATE INDEX outbox_by_key ON outbox (key, seq);
