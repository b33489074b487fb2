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

-- Rows older than a day are pruned; a cursor from before the newest pruned transaction may
-- have missed some, and its reader reads everything again.
CREATE TABLE registry_change_horizon (
    only_row       boolean PRIMARY KEY DEFAULT true CONSTRAINT registry_change_horizon_one_row
                   CHECK (only_row),
    pruned_through xid8 NOT NULL DEFAULT '0'
);
INSERT INTO registry_change_horizon DEFAULT VALUES;

-- SECURITY DEFINER with a fixed search_path: writers publish without any right on these
-- tables, and nothing a caller puts on its search_path runs here.
CREATE FUNCTION registry_publish(change_kind text, change_key text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    new_seq bigint;
    gone xid8;
BEGIN
    INSERT INTO registry_changes (kind, key) VALUES (change_kind, change_key)
        RETURNING seq INTO new_seq;
    -- Identical notifications of one transaction are folded into one by PostgreSQL.
    PERFORM pg_notify('registry_changes', change_kind);
    IF new_seq % 1000 = 0 THEN
        WITH pruned AS (
            DELETE FROM registry_changes WHERE at < now() - interval '1 day' RETURNING xid
        )
        SELECT max(xid) INTO gone FROM pruned;
        IF gone IS NOT NULL THEN
            UPDATE registry_change_horizon SET pruned_through = greatest(pruned_through, gone);
        END IF;
    END IF;
END $$;

-- A row's change, published under TG_ARGV[0] with the key in its column TG_ARGV[1]: a
-- certificate's or agent key's change is its device's, which is what a reader looks up again.
CREATE FUNCTION registry_change_of_row() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM registry_publish(TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[1]);
    ELSE
        PERFORM registry_publish(TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1]);
    END IF;
    RETURN NULL;
END $$;

-- Presence (connected, gateway, last_seen) changes with every connect and is not published:
-- no gateway decides on it, and at fleet scale it would be most of the feed.
CREATE TRIGGER devices_publish_insert_delete AFTER INSERT OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION registry_change_of_row('device', 'id');
CREATE TRIGGER devices_publish_update AFTER UPDATE ON devices
    FOR EACH ROW WHEN ((OLD.customer_id, OLD.state, OLD.vpn_address)
                       IS DISTINCT FROM (NEW.customer_id, NEW.state, NEW.vpn_address))
    EXECUTE FUNCTION registry_change_of_row('device', 'id');

CREATE TRIGGER certificates_publish AFTER INSERT OR UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION registry_change_of_row('certificate', 'device_id');

CREATE TRIGGER device_agent_keys_publish AFTER INSERT OR UPDATE OR DELETE ON device_agent_keys
    FOR EACH ROW EXECUTE FUNCTION registry_change_of_row('device', 'device_id');

CREATE TRIGGER api_tokens_publish AFTER INSERT OR UPDATE OR DELETE ON api_tokens
    FOR EACH ROW EXECUTE FUNCTION registry_change_of_row('token', 'id');

CREATE TRIGGER customers_publish AFTER INSERT OR UPDATE OR DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION registry_change_of_row('customer', 'id');
