-- The change feed: gateways and the API learn what changed instead of re-reading everything.
-- Every change to what they decide on (a device's state, address or customer; a certificate;
-- a token; a customer) appends a row here in the writer's own transaction, and a NOTIFY on the
-- channel registry_changes wakes the listeners when it commits.
--
-- A reader's cursor is the pg_snapshot it last read with: the rows visible now and not in that
-- snapshot are exactly the changes committed since, whatever order the writers' sequence
-- numbers were drawn in and however long a writer held its transaction open. So no writer
-- waits for another to publish. `seq` orders the changes of one read (and says how many
-- there were); `xid` is what the cursor is compared with.
CREATE TABLE registry_changes (
    seq   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid   xid8 NOT NULL DEFAULT pg_current_xact_id(),
    kind  text NOT NULL CONSTRAINT registry_changes_kind_known
          CHECK (kind IN ('device', 'certificate', 'token', 'customer')),
    -- The device id for device and certificate changes, else the token's or customer's id.
    key   text NOT NULL,
    at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX registry_changes_xid_idx ON registry_changes (xid);
CREATE INDEX registry_changes_at_idx ON registry_changes (at);

-- Rows older than a day are pruned (checked every thousand changes); a cursor from before the
-- newest pruned transaction may have missed some, and its reader reads everything again.
CREATE TABLE registry_change_horizon (
    only_row       boolean PRIMARY KEY DEFAULT true CONSTRAINT registry_change_horizon_one_row
                   CHECK (only_row),
    pruned_through xid8 NOT NULL DEFAULT '0'
);
INSERT INTO registry_change_horizon DEFAULT VALUES;

-- SECURITY DEFINER with a fixed search_path: writers publish without any right on these
-- tables, and nothing a caller puts on its search_path runs here.
CREATE FUNCTION registry_prune_changes() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    gone xid8;
BEGIN
    WITH pruned AS (
        DELETE FROM registry_changes WHERE at < now() - interval '1 day' RETURNING xid
    )
    SELECT max(xid) INTO gone FROM pruned;
    IF gone IS NOT NULL THEN
        UPDATE registry_change_horizon SET pruned_through = greatest(pruned_through, gone);
    END IF;
END $$;

-- One statement's changed rows, published at once: one INSERT and one NOTIFY however many rows
-- (provisioning a customer's 4,000 devices is one statement). Arguments: the kind, the column
-- holding the key (a certificate's or agent key's change is its device's: that is what a
-- reader looks up again), the transition table to read (new_rows or old_rows) and what else
-- the SELECT needs (a join and filter, for updates).
CREATE FUNCTION registry_publish_changes() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    first_seq bigint;
    last_seq bigint;
BEGIN
    EXECUTE format(
        'WITH added AS (INSERT INTO registry_changes (kind, key) SELECT DISTINCT %L, %s.%I'
        ' FROM %I %s RETURNING seq) SELECT min(seq), max(seq) FROM added',
        TG_ARGV[0], TG_ARGV[2], TG_ARGV[1], TG_ARGV[2], coalesce(TG_ARGV[3], '')
    ) INTO first_seq, last_seq;
    IF first_seq IS NULL THEN
        RETURN NULL;  -- nothing a reader decides on changed
    END IF;
    -- Identical notifications of one transaction are folded into one by PostgreSQL.
    PERFORM pg_notify('registry_changes', TG_ARGV[0]);
    IF last_seq / 1000 > (first_seq - 1) / 1000 THEN
        PERFORM registry_prune_changes();
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER devices_publish_insert AFTER INSERT ON devices
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION registry_publish_changes('device', 'id', 'new_rows');
CREATE TRIGGER devices_publish_delete AFTER DELETE ON devices
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION registry_publish_changes('device', 'id', 'old_rows');
-- Presence (connected, gateway, last_seen) changes with every connect and is not published: no
-- reader decides on it, and at fleet scale it would be most of the feed.
CREATE TRIGGER devices_publish_update AFTER UPDATE ON devices
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION registry_publish_changes('device', 'id', 'new_rows',
        'JOIN old_rows USING (id) WHERE (old_rows.customer_id, old_rows.state,'
        ' old_rows.vpn_address) IS DISTINCT FROM (new_rows.customer_id, new_rows.state,'
        ' new_rows.vpn_address)');

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('certificates', 'certificate', 'device_id'),
        ('device_agent_keys', 'device', 'device_id'),
        ('api_tokens', 'token', 'id'),
        ('customers', 'customer', 'id')
    ) AS v (tab, kind, key) LOOP
        EXECUTE format('CREATE TRIGGER %I AFTER INSERT ON %I REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION registry_publish_changes(%L, %L,'
                       ' %L)', t.tab || '_publish_insert', t.tab, t.kind, t.key, 'new_rows');
        EXECUTE format('CREATE TRIGGER %I AFTER UPDATE ON %I REFERENCING NEW TABLE AS new_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION registry_publish_changes(%L, %L,'
                       ' %L)', t.tab || '_publish_update', t.tab, t.kind, t.key, 'new_rows');
        EXECUTE format('CREATE TRIGGER %I AFTER DELETE ON %I REFERENCING OLD TABLE AS old_rows'
                       ' FOR EACH STATEMENT EXECUTE FUNCTION registry_publish_changes(%L, %L,'
                       ' %L)', t.tab || '_publish_delete', t.tab, t.kind, t.key, 'old_rows');
    END LOOP;
END $$;
