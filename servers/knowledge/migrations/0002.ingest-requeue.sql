-- When each item was last sent to a worker: get_ingest_job sends again what waited too long.
ALTER TABLE ingest_items ADD COLUMN queued_at timestamptz NOT NULL DEFAULT now();
