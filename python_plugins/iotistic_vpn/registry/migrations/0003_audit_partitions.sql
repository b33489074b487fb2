-- The audit log partitioned by month, so a retention setting drops whole months at once, with
-- the columns its readers filter on (customer, device, token). API requests land here too.
ALTER TABLE audit_log RENAME TO audit_log_0001;
ALTER INDEX audit_log_target_idx RENAME TO audit_log_0001_target_idx;

-- bigserial, not identity: PostgreSQL 15 has no identity columns on partitioned tables.
CREATE TABLE audit_log (
    id           bigserial,
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL CONSTRAINT audit_log_actor_set CHECK (actor <> ''),
    action       text NOT NULL,
    target       text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}',
    customer_id  text,
    device_id    text,
    token_id     text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
-- Whatever no month partition holds (made late, or clocks far off) is kept, never refused.
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
CREATE INDEX audit_log_target_idx ON audit_log (target, at);
CREATE INDEX audit_log_customer_idx ON audit_log (customer_id, at);
CREATE INDEX audit_log_device_idx ON audit_log (device_id, at);
CREATE INDEX audit_log_token_idx ON audit_log (token_id, at);

-- The month partition holding `day`, made if missing; returns its name.
CREATE FUNCTION audit_log_month(day date) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    first date := date_trunc('month', day)::date;
    name text := 'audit_log_' || to_char(first, 'YYYY_MM');
BEGIN
    IF to_regclass(name) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
            name, first, (first + interval '1 month')::date);
    END IF;
    RETURN name;
END $$;

SELECT audit_log_month((now() + make_interval(months => m))::date) FROM generate_series(-1, 2) AS m;

INSERT INTO audit_log (id, at, actor, action, target, detail,  customer_id, device_id)
SELECT id, at, actor, action, target, detail,
       CASE WHEN target LIKE 'customer:%' THEN substr(target, 10) END,
       CASE WHEN target LIKE 'device:%' THEN substr(target, 8) END
  FROM audit_log_0001 ORDER BY id;
SELECT setval(pg_get_serial_sequence('audit_log', 'id'),
              greatest((SELECT max(id) FROM audit_log), 1));
DROP TABLE audit_log_0001;
