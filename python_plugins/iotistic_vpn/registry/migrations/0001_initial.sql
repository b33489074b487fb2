-- Iotistic VPN registry, first schema. Constraints make bad states impossible even for
-- writers that bypass the Python registry: overlapping customer blocks, duplicate device
-- addresses, addresses outside their customer's block, certificates of revoked devices.

CREATE TABLE customers (
    id          text PRIMARY KEY
                CONSTRAINT customers_id_format CHECK (id ~ '^[a-z0-9][a-z0-9-]{0,30}[a-z0-9]$'),
    name        text NOT NULL,
    block       cidr NOT NULL
                CONSTRAINT customers_block_ipv4 CHECK (family(block) = 4 AND masklen(block) <= 29),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- No two customers share an address: the backstop behind the allocator's advisory lock.
    CONSTRAINT customers_blocks_disjoint EXCLUDE USING gist (block inet_ops WITH &&)
);

-- A block is fixed once devices hold addresses in it.
CREATE FUNCTION customers_block_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.block IS DISTINCT FROM OLD.block THEN
        RAISE EXCEPTION 'customer % keeps its block %: blocks cannot change', OLD.id, OLD.block
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER customers_block_immutable BEFORE UPDATE OF block ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_block_immutable();

CREATE TABLE devices (
    id           text PRIMARY KEY
                 CONSTRAINT devices_id_format CHECK (id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    customer_id  text NOT NULL REFERENCES customers (id) ON DELETE RESTRICT,
    state        text NOT NULL DEFAULT 'provisioned'
                 CONSTRAINT devices_state_known CHECK (state IN ('provisioned', 'active', 'revoked')),
    vpn_address  inet NOT NULL
                 CONSTRAINT devices_vpn_address_host CHECK (family(vpn_address) = 4
                                                            AND masklen(vpn_address) = 32),
    connected    boolean NOT NULL DEFAULT false,
    gateway      text,
    last_seen    timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT devices_vpn_address_unique UNIQUE (vpn_address),
    CONSTRAINT devices_connected_has_gateway CHECK (NOT connected OR gateway IS NOT NULL)
);
CREATE INDEX devices_customer_idx ON devices (customer_id);
CREATE INDEX devices_state_idx ON devices (state);
CREATE INDEX devices_gateway_idx ON devices (gateway) WHERE gateway IS NOT NULL;

-- The address must be a device address of the customer's block: not the network, the
-- reserved gateway address (first host) or the broadcast address.
CREATE FUNCTION devices_address_in_block() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    b cidr;
BEGIN
    SELECT block INTO b FROM customers WHERE id = NEW.customer_id;
    -- Offsets, not inet comparisons: inet ordering also weighs the netmask.
    IF b IS NOT NULL AND NOT (NEW.vpn_address << b AND NEW.vpn_address - b::inet
                              BETWEEN 2 AND (2 ^ (32 - masklen(b)))::bigint - 2) THEN
        RAISE EXCEPTION 'address % of device % is not a device address of block % of customer %',
            host(NEW.vpn_address), NEW.id, b, NEW.customer_id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER devices_address_in_block BEFORE INSERT OR UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION devices_address_in_block();

CREATE TABLE certificates (
    -- X.509 serials are up to 20 octets: numeric holds them exactly, bigint would not.
    serial             numeric(49, 0) PRIMARY KEY CONSTRAINT certificates_serial_positive
                       CHECK (serial > 0),
    device_id          text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    fingerprint        text NOT NULL CONSTRAINT certificates_fingerprint_sha256
                       CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    not_before         timestamptz NOT NULL,
    not_after          timestamptz NOT NULL,
    revoked_at         timestamptz,
    revocation_reason  text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT certificates_fingerprint_unique UNIQUE (fingerprint),
    CONSTRAINT certificates_validity CHECK (not_after > not_before),
    CONSTRAINT certificates_revocation_complete
        CHECK ((revoked_at IS NULL) = (revocation_reason IS NULL))
);
CREATE INDEX certificates_device_idx ON certificates (device_id);
CREATE INDEX certificates_revoked_idx ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;

-- A revoked device gets no new certificate, and a live device holds at most two valid ones
-- (old and new during a rotation). The device row lock serialises concurrent inserts.
CREATE FUNCTION certificates_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    st text;
    live int;
BEGIN
    IF NEW.revoked_at IS NOT NULL THEN
        RETURN NEW;
    END IF;
    SELECT state INTO st FROM devices WHERE id = NEW.device_id FOR UPDATE;
    IF st = 'revoked' THEN
        RAISE EXCEPTION 'device % is revoked: certificate % cannot be recorded as valid',
            NEW.device_id, NEW.serial USING ERRCODE = 'check_violation';
    END IF;
    SELECT count(*) INTO live FROM certificates
     WHERE device_id = NEW.device_id AND revoked_at IS NULL AND not_after > now()
       AND serial <> NEW.serial;
    IF live >= 2 THEN
        RAISE EXCEPTION 'device % already has 2 valid certificates: revoke one before recording %',
            NEW.device_id, NEW.serial USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER certificates_guard BEFORE INSERT ON certificates
    FOR EACH ROW EXECUTE FUNCTION certificates_guard();

CREATE TABLE connection_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id  text NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    gateway    text NOT NULL,
    event      text NOT NULL CONSTRAINT connection_events_event_known
               CHECK (event IN ('connect', 'disconnect')),
    at         timestamptz NOT NULL DEFAULT now(),
    -- Where the device connected from, as the gateway saw it.
    address    inet
);
CREATE INDEX connection_events_device_idx ON connection_events (device_id, at);

-- Append-only history; no foreign keys, so it outlives what it talks about.
CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL CONSTRAINT audit_log_actor_set CHECK (actor <> ''),
    action  text NOT NULL,
    target  text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_target_idx ON audit_log (target, at);
