-- Live revocation for Django REST framework tokens (wsgate's `django` store).
--
-- Apply once to the Django database (PostgreSQL 11 or later), for example
-- from a Django migration with migrations.RunSQL(open(...).read()):
--
--     psql "$DATABASE_URL" -f deploy/sql/django-revoke-trigger.sql
--
-- Deleting a row of authtoken_token (what logout does with DRF/djoser) or
-- deactivating a user notifies every wsgate node on the `wsgate_revoke`
-- channel with the SHA-256 digest of the token; the nodes close its sockets
-- with 4003 and drop it from their caches. The token never leaves the
-- database: only its digest is sent.

CREATE OR REPLACE FUNCTION wsgate_notify_django_token_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wsgate_revoke', encode(sha256(convert_to(OLD.key, 'UTF8')), 'hex'));
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS wsgate_authtoken_deleted ON authtoken_token;
CREATE TRIGGER wsgate_authtoken_deleted
    AFTER DELETE ON authtoken_token
    FOR EACH ROW EXECUTE FUNCTION wsgate_notify_django_token_deleted();

CREATE OR REPLACE FUNCTION wsgate_notify_django_user_deactivated() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    token_key text;
BEGIN
    IF OLD.is_active AND NOT NEW.is_active THEN
        FOR token_key IN SELECT key FROM authtoken_token WHERE user_id = NEW.id LOOP
            PERFORM pg_notify('wsgate_revoke', encode(sha256(convert_to(token_key, 'UTF8')), 'hex'));
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS wsgate_auth_user_deactivated ON auth_user;
CREATE TRIGGER wsgate_auth_user_deactivated
    AFTER UPDATE OF is_active ON auth_user
    FOR EACH ROW EXECUTE FUNCTION wsgate_notify_django_user_deactivated();
