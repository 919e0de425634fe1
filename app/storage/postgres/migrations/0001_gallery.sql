-- The face gallery. Applied once, in one transaction, under the migration lock
-- (app/storage/postgres/migrations.py). Never edit a released migration: add one.

CREATE EXTENSION IF NOT EXISTS vector;

-- What the gallery is bound to: model_id, dim, created_at (app/gallery/postgres/schema.py).
CREATE TABLE facerec_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per collection ever written to; never deleted, so an id always names the
-- same collection. The counters are kept by the triggers below, in the transaction
-- that changes the faces; replicas cache them and hear of changes by NOTIFY.
-- Every write locks its collection's row first, so writes to one collection are
-- serialised and the counters and versions arrive at the listeners in commit order.
CREATE TABLE collections (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text COLLATE "C" NOT NULL UNIQUE,
    face_count    bigint NOT NULL DEFAULT 0 CHECK (face_count >= 0),
    subject_count bigint NOT NULL DEFAULT 0 CHECK (subject_count >= 0),
    version       bigint NOT NULL DEFAULT 0
);

-- COLLATE "C": names compare and sort by code point, as in the embedded gallery.
CREATE TABLE subjects (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection_id bigint NOT NULL REFERENCES collections (id),
    name          text COLLATE "C" NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    UNIQUE (collection_id, name),
    UNIQUE (id, collection_id)
);

-- id: insertion order (exports and pages follow it). collection_id repeats the
-- subject's, checked by the composite key, so searches filter faces without a join.
-- The embedding column gets its dimension, and its HNSW index, when the gallery is
-- bound to a recognizer. STORAGE PLAIN keeps vectors in the row (no TOAST lookups).
CREATE TABLE faces (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    face_id       text COLLATE "C" NOT NULL UNIQUE,
    collection_id bigint NOT NULL,
    subject_id    bigint NOT NULL,
    image_sha256  text COLLATE "C" NOT NULL,
    x1            double precision NOT NULL,
    y1            double precision NOT NULL,
    x2            double precision NOT NULL,
    y2            double precision NOT NULL,
    det_score     double precision NOT NULL,
    model_id      text NOT NULL,
    created_at    timestamptz NOT NULL,
    embedding     vector NOT NULL,
    UNIQUE (subject_id, image_sha256),
    FOREIGN KEY (subject_id, collection_id) REFERENCES subjects (id, collection_id)
        ON DELETE CASCADE
);
ALTER TABLE faces ALTER COLUMN embedding SET STORAGE PLAIN;
CREATE INDEX faces_by_collection ON faces (collection_id, id);

-- Aligned 112x112 crops (PNG, already compressed): apart, so searches and exact
-- scans read compact face rows.
CREATE TABLE face_crops (
    face_row bigint PRIMARY KEY REFERENCES faces (id) ON DELETE CASCADE,
    png      bytea NOT NULL
);
ALTER TABLE face_crops ALTER COLUMN png SET STORAGE EXTERNAL;

-- Counters and versions, in the changing transaction, whoever changes the rows
-- (the service, or an operator in psql). One NOTIFY per changed collection:
-- {"id", "faces", "subjects", "version"}; delivered to listeners at commit.
CREATE FUNCTION facerec_collection_changed(changed_id bigint, face_delta bigint,
                                           subject_delta bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    counts record;
BEGIN
    UPDATE collections
       SET face_count = face_count + face_delta,
           subject_count = subject_count + subject_delta,
           version = version + 1
     WHERE id = changed_id
    RETURNING id, face_count, subject_count, version INTO counts;
    IF FOUND THEN
        PERFORM pg_notify('facerec_gallery', json_build_object(
            'id', counts.id, 'faces', counts.face_count,
            'subjects', counts.subject_count, 'version', counts.version)::text);
    END IF;
END $$;

CREATE FUNCTION facerec_faces_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta record;
    sign bigint := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    FOR delta IN SELECT collection_id, count(*) AS n FROM changed GROUP BY collection_id
    LOOP
        PERFORM facerec_collection_changed(delta.collection_id, sign * delta.n, 0);
    END LOOP;
    RETURN NULL;
END $$;

CREATE FUNCTION facerec_subjects_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta record;
    sign bigint := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;
BEGIN
    FOR delta IN SELECT collection_id, count(*) AS n FROM changed GROUP BY collection_id
    LOOP
        PERFORM facerec_collection_changed(delta.collection_id, 0, sign * delta.n);
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER faces_inserted AFTER INSERT ON faces
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION facerec_faces_changed();
CREATE TRIGGER faces_deleted AFTER DELETE ON faces
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION facerec_faces_changed();
CREATE TRIGGER subjects_inserted AFTER INSERT ON subjects
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION facerec_subjects_changed();
CREATE TRIGGER subjects_deleted AFTER DELETE ON subjects
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT
    EXECUTE FUNCTION facerec_subjects_changed();

-- A face or subject moved between collections would break every counter above.
CREATE FUNCTION facerec_refuse_moves() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'facerec: % rows never change collection (delete and re-add)', TG_TABLE_NAME;
END $$;
CREATE TRIGGER faces_stay AFTER UPDATE OF collection_id ON faces
    FOR EACH ROW WHEN (OLD.collection_id IS DISTINCT FROM NEW.collection_id)
    EXECUTE FUNCTION facerec_refuse_moves();
CREATE TRIGGER subjects_stay AFTER UPDATE OF collection_id ON subjects
    FOR EACH ROW WHEN (OLD.collection_id IS DISTINCT FROM NEW.collection_id)
    EXECUTE FUNCTION facerec_refuse_moves();
