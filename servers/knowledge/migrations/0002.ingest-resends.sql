-- When each ingest item's task was last sent, so that one lost on the way is sent again.
ALTER TABLE ingest_items ADD COLUMN sent_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX ingest_items_pending ON ingest_items (sent_at) WHERE state = 'pending';
