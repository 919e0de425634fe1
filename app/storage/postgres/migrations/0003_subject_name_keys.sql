-- Look-alike subject names ("Ada", "ADA", "Ａｄａ": one app.core.names.name_key):
-- a collection holds one subject per key, and the unique index below is the arbiter
-- (two replicas creating look-alikes at once: one commits, the other gets
-- name_conflict). The key is computed by the service (Python), so this migration
-- only adds the column: app/gallery/postgres/name_keys.py fills in the keys of the
-- rows that have none when a gallery opens (under the migration lock).
--
-- Subjects from before the rule that share a key: the oldest (then the lowest id)
-- holds it, the others stay, addressable by their exact names, with look_alike for
-- an operator to merge (docs/gallery.md). When a key's holder is deleted, its oldest
-- look-alike takes the key over, so a key held by anyone is held by one subject the
-- unique index knows.

ALTER TABLE subjects ADD COLUMN name_key text COLLATE "C";
ALTER TABLE subjects ADD COLUMN look_alike boolean NOT NULL DEFAULT false;
CREATE UNIQUE INDEX subjects_by_name_key ON subjects (collection_id, name_key)
    WHERE NOT look_alike;
CREATE INDEX subjects_look_alikes ON subjects (collection_id, name_key) WHERE look_alike;
CREATE INDEX subjects_without_name_key ON subjects (id) WHERE name_key IS NULL;

CREATE FUNCTION facerec_subject_keys_freed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE subjects SET look_alike = false
     WHERE id IN (
        SELECT DISTINCT ON (heir.collection_id, heir.name_key) heir.id
          FROM gone
          JOIN subjects heir
            ON heir.collection_id = gone.collection_id AND heir.name_key = gone.name_key
         WHERE NOT gone.look_alike AND heir.look_alike
         ORDER BY heir.collection_id, heir.name_key, heir.created_at, heir.id);
    RETURN NULL;
END $$;

CREATE TRIGGER subjects_pass_name_keys AFTER DELETE ON subjects
    REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
    EXECUTE FUNCTION facerec_subject_keys_freed();
