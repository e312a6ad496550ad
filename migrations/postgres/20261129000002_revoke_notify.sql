-- Revocation reaches live sockets: every node LISTENs on `wsgate_revoke` and
-- closes the sockets of the token whose SHA-256 digest (hex) is notified.
-- Fired when a native token is deleted or revoked, and when a digest is
-- recorded in wsgate_revocations (tokens of the query and django stores).

CREATE OR REPLACE FUNCTION wsgate_notify_token_revoked() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('wsgate_revoke', OLD.digest);
    ELSIF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('wsgate_revoke', NEW.digest);
    ELSIF NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL THEN
        PERFORM pg_notify('wsgate_revoke', NEW.digest);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS wsgate_tokens_revoked ON wsgate_tokens;
CREATE TRIGGER wsgate_tokens_revoked
    AFTER DELETE OR UPDATE OF revoked_at ON wsgate_tokens
    FOR EACH ROW EXECUTE FUNCTION wsgate_notify_token_revoked();

DROP TRIGGER IF EXISTS wsgate_revocations_added ON wsgate_revocations;
CREATE TRIGGER wsgate_revocations_added
    AFTER INSERT ON wsgate_revocations
    FOR EACH ROW EXECUTE FUNCTION wsgate_notify_token_revoked();
