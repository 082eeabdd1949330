-- Articles (the record; Qdrant holds their chunks' vectors) and ingestion jobs.
CREATE TABLE articles (
    id            text PRIMARY KEY,
    title         text NOT NULL,
    body          text NOT NULL,
    tags          text[] NOT NULL DEFAULT '{}',
    source        text NOT NULL,
    content_hash  text NOT NULL,
    version       integer NOT NULL DEFAULT 1,
    -- The content_hash whose chunks are in Qdrant; NULL until the first index.
    indexed_hash  text,
    chunks        integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX articles_source ON articles (source, id);
CREATE INDEX articles_tags ON articles USING gin (tags);

CREATE TABLE ingest_jobs (
    id          uuid PRIMARY KEY,
    source      text NOT NULL,
    total       integer NOT NULL,
    unchanged   integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per article a job has to index; a task marks it done or failed.
CREATE TABLE ingest_items (
    job_id        uuid NOT NULL REFERENCES ingest_jobs (id) ON DELETE CASCADE,
    article_id    text NOT NULL,
    content_hash  text NOT NULL,
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'failed')),
    error         text,
    finished_at   timestamptz,
    PRIMARY KEY (job_id, article_id)
);
