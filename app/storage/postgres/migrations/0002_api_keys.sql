-- API keys (hashes only), shared by every replica. Revoked keys stay (revoked_at)
-- so listings keep their history and a key id is never reused.

CREATE TABLE api_keys (
    key_id      text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    key_hash    text NOT NULL,
    admin       boolean NOT NULL,
    collections text[] NOT NULL,
    created_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);

-- Every replica caches the active keys and re-reads a key when it hears its id on
-- facerec_keys, whoever changed the row (the service, or an operator in psql).
CREATE FUNCTION facerec_api_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('facerec_keys', OLD.key_id);
    ELSE
        PERFORM pg_notify('facerec_keys', NEW.key_id);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER api_keys_changed AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION facerec_api_key_changed();

-- TRUNCATE fires no row trigger: '*' tells the replicas to re-read every key.
CREATE FUNCTION facerec_api_keys_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('facerec_keys', '*');
    RETURN NULL;
END $$;

CREATE TRIGGER api_keys_truncated AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION facerec_api_keys_truncated();
