-- API tokens of customers (scoped to one customer, optionally to some devices) and of the
-- platform team (operator: every customer). Only the SHA-256 of a token's secret is kept.
CREATE TABLE api_tokens (
    id           text PRIMARY KEY CONSTRAINT api_tokens_id_format CHECK (id ~ '^[0-9a-f]{16}$'),
    name         text NOT NULL CONSTRAINT api_tokens_name_format
                 CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9 ._-]{0,62}$'),
    customer_id  text REFERENCES customers (id) ON DELETE CASCADE,
    secret_hash  bytea NOT NULL CONSTRAINT api_tokens_hash_sha256 CHECK (length(secret_hash) = 32),
    devices      text[],
    ports        int[] NOT NULL DEFAULT '{48484}'
                 CONSTRAINT api_tokens_ports_valid
                 CHECK (cardinality(ports) > 0 AND 0 < ALL (ports) AND 65536 > ALL (ports)),
    read_only    boolean NOT NULL DEFAULT true,
    expires_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_operator_scope CHECK (customer_id IS NOT NULL OR devices IS NULL)
);
-- Idempotent by name: one live token per name and owner ('' stands for the operators); a
-- revoked token keeps its row for the audit log and frees its name.
CREATE UNIQUE INDEX api_tokens_live_name ON api_tokens (coalesce(customer_id, ''), name)
    WHERE revoked_at IS NULL;
CREATE INDEX api_tokens_customer_idx ON api_tokens (customer_id);
