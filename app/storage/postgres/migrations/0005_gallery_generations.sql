-- Gallery generations: zero-downtime model swap on PostgreSQL (issue 13).
--
-- A generation is the gallery's embeddings by one recognizer. Faces (identity,
-- subject, crop, counters) stay in `faces`, stored once for every generation:
-- generation 0 keeps its embeddings in faces.embedding (so a database from before
-- this migration is generation 0 as it is, nothing rewritten), generation n >= 1 in
-- a table of its own, face_vectors_<n> (vector(dim) + its HNSW index), created by the
-- service when a swap starts (app/gallery/postgres/generation_tables.py) and dropped
-- when the generation is discarded or retired. A face enrolled while generation
-- n >= 1 serves has faces.embedding NULL until a rollback to 0 re-embeds it.
ALTER TABLE faces ALTER COLUMN embedding DROP NOT NULL;

-- state: copying (being filled by a swap, never activated), ready (activated at least
-- once, its embeddings kept), retired (embeddings dropped: neither active nor previous),
-- discarded (a swap that did not finish; its table dropped). Numbers are never reused.
CREATE TABLE gallery_generations (
    number          integer PRIMARY KEY CHECK (number >= 0),
    model_id        text NOT NULL,
    dim             integer NOT NULL CHECK (dim > 0),
    manifest_path   text NOT NULL,
    manifest_sha256 text NOT NULL,
    created_at      timestamptz NOT NULL,
    created_by      text,
    state           text NOT NULL
        CHECK (state IN ('copying', 'ready', 'retired', 'discarded'))
);

CREATE TABLE gallery_activations (
    generation   integer NOT NULL REFERENCES gallery_generations (number),
    activated_at timestamptz NOT NULL,
    activated_by text,
    PRIMARY KEY (generation, activated_at)
);

-- The one active pointer. No row: generation 0 serves (a gallery never swapped).
CREATE TABLE gallery_active (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generation   integer NOT NULL REFERENCES gallery_generations (number),
    previous     integer REFERENCES gallery_generations (number),
    activated_at timestamptz NOT NULL,
    activated_by text
);

-- Every replica LISTENs on facerec_generation and switches to the generation named
-- (delivered at commit, whoever changed the row: the service, or an operator in psql).
CREATE FUNCTION facerec_generation_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('facerec_generation', NEW.generation::text);
    RETURN NULL;
END $$;

CREATE TRIGGER gallery_active_changed AFTER INSERT OR UPDATE ON gallery_active
    FOR EACH ROW EXECUTE FUNCTION facerec_generation_changed();
