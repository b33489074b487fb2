-- Provisioning tokens: what a device presents to enroll itself (POST /v1/enroll). Scoped to one
-- customer, with an expiry, a number of uses and an optional device-id glob; only the SHA-256
-- of the secret is kept. Not published in the change feed: nothing caches them, every
-- enrollment reads its token's row again (and takes its use in the same statement).
CREATE TABLE provisioning_tokens (
    id              text PRIMARY KEY
                    CONSTRAINT provisioning_tokens_id_format CHECK (id ~ '^[0-9a-f]{16}$'),
    customer_id     text NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name            text NOT NULL CONSTRAINT provisioning_tokens_name_format
                    CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$'),
    secret_hash     bytea NOT NULL
                    CONSTRAINT provisioning_tokens_hash_sha256 CHECK (length(secret_hash) = 32),
    expires_at      timestamptz NOT NULL,
    max_uses        int NOT NULL CONSTRAINT provisioning_tokens_max_uses_positive
                    CHECK (max_uses > 0),
    uses            int NOT NULL DEFAULT 0,
    -- A glob of device-id characters with * and ? (provisioning_tokens.py checks it; no regex,
    -- so a pattern cannot be made to backtrack).
    device_pattern  text CONSTRAINT provisioning_tokens_pattern_format
                    CHECK (device_pattern ~ '^[a-z0-9*?-]{1,63}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    revoked_at      timestamptz,
    CONSTRAINT provisioning_tokens_uses_bounded CHECK (uses >= 0 AND uses <= max_uses)
);
-- Idempotent by name, like API tokens: one live token per customer and name.
CREATE UNIQUE INDEX provisioning_tokens_live_name ON provisioning_tokens (customer_id, name)
    WHERE revoked_at IS NULL;

-- The API: makes, lists and revokes them (operators, a customer's admin token), and enrolls
-- devices, which registers them and records their certificates (provisioning.provision_devices).
GRANT SELECT, INSERT ON provisioning_tokens TO iotistic_api;
GRANT UPDATE (uses, revoked_at) ON provisioning_tokens TO iotistic_api;
GRANT INSERT (id, customer_id, vpn_address) ON devices TO iotistic_api;
GRANT INSERT ON certificates TO iotistic_api;
-- Registering a device and recording its certificate lock the device row (SELECT ... FOR
-- UPDATE, also in 0001's certificates_guard), which needs UPDATE on some column: updated_at,
-- which nothing decides on.
GRANT UPDATE (updated_at) ON devices TO iotistic_api;

GRANT SELECT, INSERT, UPDATE, DELETE ON provisioning_tokens TO iotistic_operator;
