-- The transactional outbox. A backend inserts ("group", data) in the same
-- transaction as its business write; once that transaction commits, the
-- wsgate nodes with `outbox.enabled` publish the row to the group and delete
-- it. A rolled-back transaction leaves no row, so it publishes nothing.
--
-- Ordering and sharing: every row falls in one of 64 partitions by a hash of
-- its group (`part`, computed by PostgreSQL, so every writer and every node
-- agree). A node works a partition inside one transaction: it locks the
-- partition's row in wsgate_outbox_partitions (FOR UPDATE SKIP LOCKED, so
-- nodes share partitions without waiting on each other), reads the
-- partition's rows in id order, publishes them, deletes them and commits.
-- One partition is worked by one node at a time, so a group's rows are
-- published in order; a node that dies mid-batch rolls back, and another
-- node publishes that batch again (at least once).
CREATE TABLE IF NOT EXISTS wsgate_outbox (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "group"     TEXT NOT NULL
                CHECK ("group" ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    data        JSONB NOT NULL
                CHECK (octet_length(data::text) <= 1048576),
    part        SMALLINT NOT NULL
                GENERATED ALWAYS AS ((hashtext("group") & 63)::smallint) STORED,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS wsgate_outbox_part_id ON wsgate_outbox (part, id);

CREATE TABLE IF NOT EXISTS wsgate_outbox_partitions (
    part        SMALLINT PRIMARY KEY
);
INSERT INTO wsgate_outbox_partitions (part)
    SELECT generate_series(0, 63) ON CONFLICT DO NOTHING;

-- Wakes the nodes (LISTEN wsgate_outbox) when an inserting transaction
-- commits; PostgreSQL sends a notice only on commit, once per transaction.
CREATE OR REPLACE FUNCTION wsgate_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wsgate_outbox', '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS wsgate_outbox_inserted ON wsgate_outbox;
CREATE TRIGGER wsgate_outbox_inserted
    AFTER INSERT ON wsgate_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION wsgate_outbox_notify();
