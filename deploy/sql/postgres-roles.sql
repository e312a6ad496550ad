-- Least-privilege PostgreSQL roles for wsgate (step 1 of 2).
--
--   wsgate_owner  owns wsgate's tables and runs its migrations, once per
--                 release (`wsgate migrate`, or a Job/init step) with
--                 database.migrate = true.
--   wsgate_node   what every serving node connects as, with
--                 database.migrate = false: it reads tokens, marks native
--                 tokens revoked, records revocations of foreign tokens,
--                 and LISTENs on `wsgate_revoke` (LISTEN needs no grant).
--                 It cannot create, drop or alter anything, issue tokens,
--                 or delete rows.
--
-- 1. As a superuser or the database's owner, in the target database:
--
--        psql "$ADMIN_DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/sql/postgres-roles.sql
--
--    then give both roles a password (\password wsgate_owner, \password
--    wsgate_node) or your own authentication.
-- 2. As wsgate_owner: `wsgate migrate`, then
--
--        psql "$OWNER_DATABASE_URL" -v ON_ERROR_STOP=1 -f deploy/sql/postgres-grants.sql
--
-- 3. Nodes: WSGATE__DATABASE__URL as wsgate_node, WSGATE__DATABASE__MIGRATE=false.
--
-- tests/db_roles.rs runs these files (under role names of its own) and
-- checks what a node may and may not do.

CREATE ROLE wsgate_owner LOGIN;
CREATE ROLE wsgate_node LOGIN;
-- Since PostgreSQL 15 only the database owner may create in schema public.
GRANT USAGE, CREATE ON SCHEMA public TO wsgate_owner;
GRANT USAGE ON SCHEMA public TO wsgate_node;
