-- An event Kafka can never take (larger than the producer's maximum request) is set aside with
-- the reason, instead of holding up every event after it; the outbox still keeps it.
ALTER TABLE outbox ADD COLUMN failed_at timestamptz;
ALTER TABLE outbox ADD COLUMN error text;
DROP INDEX outbox_unsent;
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL AND failed_at IS NULL;
