-- Long-term memory of customers: the system of record; Qdrant holds each memory's vector.
CREATE TABLE memories (
    id          uuid PRIMARY KEY,
    customer_id text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('preference', 'fact', 'interaction_summary')),
    text        text NOT NULL CHECK (length(text) BETWEEN 1 AND 8000),
    source      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX memories_customer ON memories (customer_id, created_at, id);
