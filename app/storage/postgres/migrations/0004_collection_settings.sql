-- Per-collection settings an operator chose (issue 15: the target false positive
-- identification rate of open-set identification). No row, or a NULL: the service
-- default. Keyed by name, so a collection may be configured before it holds faces.
-- Replicas re-read a collection's row at most a second after they last read it.

CREATE TABLE collection_settings (
    collection  text COLLATE "C" PRIMARY KEY,
    target_fpir double precision CHECK (target_fpir > 0 AND target_fpir < 1),
    updated_at  timestamptz NOT NULL
);
