-- Least privilege: group roles (NOLOGIN) for the gateways, the cloud API and the operators, each
-- with exactly what its code runs; logins (one per gateway, one for the API) are members, made
-- by the registry_db role. The owner keeps the schema: migrations run as it. And the address
-- pool, stored so the database itself keeps every customer block inside it and off the
-- gateways' /24. Registry.migrate() sets iotistic_vpn.pool and iotistic_vpn.gateway_network for
-- this transaction (conventions.gateway_network derives the /24 in one place).

-- Roles belong to the cluster, not the database: another registry database of the same server
-- (the test suite's, a staging copy) may have made them already.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['iotistic_gateway', 'iotistic_api', 'iotistic_operator'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', name);
        END IF;
    END LOOP;
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO iotistic_gateway, iotistic_api,'
                   ' iotistic_operator', current_database());
END $$;

-- One row: the pool customer blocks come from and the gateways' network inside it.
CREATE TABLE registry_settings (
    id               boolean PRIMARY KEY DEFAULT true CONSTRAINT registry_settings_one_row CHECK (id),
    pool             cidr NOT NULL CONSTRAINT registry_settings_pool_ipv4 CHECK (family(pool) = 4),
    gateway_network  cidr NOT NULL,
    CONSTRAINT registry_settings_gateways_in_pool CHECK (gateway_network <<= pool)
);

DO $$
DECLARE
    pool_text text := current_setting('iotistic_vpn.pool', true);
    gateways_text text := current_setting('iotistic_vpn.gateway_network', true);
    bad record;
BEGIN
    IF coalesce(pool_text, '') = '' OR coalesce(gateways_text, '') = '' THEN
        RAISE EXCEPTION 'migration 0007 needs the address pool: apply it with Registry.migrate'
            ' (vpn_registry migrate: true, or iotistic-vpn migrate), which sets it'
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO registry_settings (pool, gateway_network)
        VALUES (pool_text::cidr, gateways_text::cidr);
    SELECT c.id, c.block INTO bad FROM customers c
     WHERE NOT c.block <<= pool_text::cidr OR c.block && gateways_text::cidr
     ORDER BY c.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'migration 0007 refused: customer % holds block %, which is outside the'
            ' address pool % or overlaps the gateways'' network %: move that customer or'
            ' migrate with the pool it was allocated from', bad.id, bad.block, pool_text,
            gateways_text USING ERRCODE = 'check_violation';
    END IF;
END $$;

-- A CHECK cannot read another table: a trigger checks each block against the stored pool.
CREATE FUNCTION customers_block_in_pool() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s registry_settings;
BEGIN
    SELECT * INTO s FROM registry_settings;
    IF NOT NEW.block <<= s.pool THEN
        RAISE EXCEPTION 'block % of customer % is outside the address pool %',
            NEW.block, NEW.id, s.pool USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.block && s.gateway_network THEN
        RAISE EXCEPTION 'block % of customer % overlaps %, the gateways'' tunnel network',
            NEW.block, NEW.id, s.gateway_network USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER customers_block_in_pool BEFORE INSERT OR UPDATE OF block ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_block_in_pool();

-- A new pool must still hold every customer's block.
CREATE FUNCTION registry_settings_keep_blocks() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT c.id, c.block INTO bad FROM customers c
     WHERE NOT c.block <<= NEW.pool OR c.block && NEW.gateway_network ORDER BY c.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'address pool % (gateways'' network %) would leave block % of customer %'
            ' outside it', NEW.pool, NEW.gateway_network, bad.block, bad.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER registry_settings_keep_blocks BEFORE UPDATE ON registry_settings
    FOR EACH ROW EXECUTE FUNCTION registry_settings_keep_blocks();

-- A gateway writes only the presence columns. The one state change a connect makes (a device's
-- first connect activates it) is therefore the database's rule, and a revoked device cannot be
-- marked connected by anyone (the registry refuses such a connect before it gets here).
CREATE FUNCTION devices_presence() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.connected AND NEW.state = 'revoked'
       AND (NOT OLD.connected OR NEW.gateway IS DISTINCT FROM OLD.gateway) THEN
        RAISE EXCEPTION 'device % is revoked: it cannot be connected through %',
            NEW.id, NEW.gateway USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.connected AND NEW.state = 'provisioned' THEN
        NEW.state := 'active';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER devices_presence BEFORE UPDATE OF connected, gateway ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_presence();

-- The address check reads customers, which a gateway may not: it runs as the owner. Fixed
-- search_path, as every SECURITY DEFINER function needs.
ALTER FUNCTION devices_address_in_block() SECURITY DEFINER SET search_path = public, pg_temp;

-- The API keeps the audit log's month partitions; making and dropping a table is the owner's,
-- so these two run as the owner and do nothing else.
ALTER FUNCTION audit_log_month(date) SECURITY DEFINER SET search_path = public, pg_temp;

CREATE FUNCTION audit_log_drop_before(cutoff date) RETURNS SETOF text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    name text;
BEGIN
    FOR name IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'audit_log'::regclass AND c.relname ~ '^audit_log_[0-9]{4}_[0-9]{2}$'
           AND c.relname < 'audit_log_' || to_char(cutoff, 'YYYY_MM') ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', name);
        RETURN NEXT name;
    END LOOP;
END $$;

-- Functions are executable by PUBLIC by default; the owner's ones only by who needs them.
REVOKE EXECUTE ON FUNCTION audit_log_month(date), audit_log_drop_before(date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_log_month(date), audit_log_drop_before(date)
    TO iotistic_api, iotistic_operator;

-- The change feed's writers run as the owner (0006's SECURITY DEFINER trigger functions); nobody
-- calls them directly: a gateway cannot publish made-up changes. Trigger functions need no
-- EXECUTE to fire.
REVOKE EXECUTE ON FUNCTION registry_publish_changes(), registry_prune_changes() FROM PUBLIC;

-- Gateways: the snapshot (devices, certificates), revoked serials, the change feed (0006), their
-- connection events (read for the ordering, appended), and devices' presence. Not customers,
-- tokens, agent keys, the audit log; no certificate or device state write.
GRANT SELECT ON devices, certificates, connection_events, registry_settings, registry_changes,
    registry_change_horizon TO iotistic_gateway;
GRANT UPDATE (connected, gateway, last_seen) ON devices TO iotistic_gateway;
GRANT INSERT (device_id, gateway, event, address, at, happened_at) ON connection_events
    TO iotistic_gateway;

-- The API: find devices and their status, authenticate tokens, read agent keys for forwarding,
-- make and revoke customers' tokens for operator tokens, append to and read the audit log.
GRANT SELECT ON customers, devices, certificates, api_tokens, device_agent_keys, audit_log,
    registry_settings, schema_migrations, registry_changes, registry_change_horizon
    TO iotistic_api;
GRANT INSERT ON api_tokens, audit_log TO iotistic_api;
GRANT UPDATE (revoked_at) ON api_tokens TO iotistic_api;
-- Making a customer's token locks the customer row (SELECT ... FOR UPDATE), which PostgreSQL
-- allows only with UPDATE on some column: the display name, the least of them.
GRANT UPDATE (name) ON customers TO iotistic_api;

-- Operators (vpn_registry, vpn_provision, vpn_token, the CLI): provisioning, certificates,
-- revocation, tokens, agent keys, the audit log. Rows, never the schema.
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, devices, certificates, connection_events,
    api_tokens, device_agent_keys TO iotistic_operator;
GRANT SELECT, INSERT ON audit_log TO iotistic_operator;
GRANT SELECT ON registry_settings, schema_migrations, registry_changes, registry_change_horizon
    TO iotistic_operator;
-- The audit log's id sequence (its name carries 0003's rename history).
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SEQUENCE %s TO iotistic_api, iotistic_operator',
                   pg_get_serial_sequence('audit_log', 'id'));
END $$;
