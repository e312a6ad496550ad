-- Least-privilege PostgreSQL roles for wsgate (step 2 of 2): what a
-- serving node (wsgate_node) may do on wsgate's tables. Run as their owner
-- (wsgate_owner) after `wsgate migrate`; see deploy/sql/postgres-roles.sql.

-- native store: verify (SELECT), revoke (UPDATE of revoked_at only).
GRANT SELECT ON wsgate_tokens TO wsgate_node;
GRANT UPDATE (revoked_at) ON wsgate_tokens TO wsgate_node;
-- Every store: revocations of tokens wsgate does not own.
GRANT SELECT, INSERT ON wsgate_revocations TO wsgate_node;

-- auth.store = "django" (run as the owner of Django's tables instead): only
-- the columns the store reads, never password hashes or e-mail addresses.
-- For a custom AUTH_USER_MODEL, its table and the auth.django_user_pk and
-- auth.django_user_active columns.
--   GRANT SELECT (key, user_id) ON authtoken_token TO wsgate_node;
--   GRANT SELECT (id, is_active) ON auth_user TO wsgate_node;
