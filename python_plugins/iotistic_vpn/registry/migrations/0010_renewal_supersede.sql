-- Renewal through the tunnel (docs/enrollment.md): a device holds its old and its new
-- certificate (0001's guard allows two live ones) until it has connected with the new one; that
-- connect supersedes the older ones. A connect event carries the serial its session presented
-- (the gateway read it from OpenVPN's tls_serial_0), and this trigger, not the gateway, revokes:
-- a gateway still may not write certificates, and all it can cause is that a device's
-- certificates older than one it really connected with end as `superseded`.
ALTER TABLE connection_events ADD COLUMN serial numeric(49, 0)
    CONSTRAINT connection_events_serial_positive CHECK (serial > 0);
GRANT INSERT (serial) ON connection_events TO iotistic_gateway;

-- One statement for a whole replayed batch (the agent sends up to 500 events at once). Older:
-- by the certificate's own start, then by when the registry recorded it. Each superseded
-- certificate is an audit entry in the shape Registry.revoke_certificates writes.
CREATE FUNCTION certificates_supersede_connected() RETURNS trigger LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    WITH connected AS (
        SELECT e.device_id, e.serial, e.gateway, c.not_before, c.created_at
          FROM new_rows e
          JOIN certificates c ON c.serial = e.serial AND c.device_id = e.device_id
         WHERE e.event = 'connect' AND c.revoked_at IS NULL
    ), superseded AS (
        UPDATE certificates o SET revoked_at = now(), revocation_reason = 'superseded'
          FROM connected n
         WHERE o.device_id = n.device_id AND o.revoked_at IS NULL AND o.serial <> n.serial
           AND (o.not_before, o.created_at, o.serial) < (n.not_before, n.created_at, n.serial)
        RETURNING o.serial, o.device_id, n.serial AS by_serial, n.gateway
    )
    INSERT INTO audit_log (actor, action, target, detail, device_id)
    SELECT 'gateway:' || gateway, 'certificate.revoke', 'device:' || device_id,
           jsonb_build_object('serial', serial::text, 'reason', 'superseded',
                              'superseded_by', by_serial::text), device_id
      FROM superseded;
    RETURN NULL;
END $$;
REVOKE EXECUTE ON FUNCTION certificates_supersede_connected() FROM PUBLIC;

CREATE TRIGGER connection_events_supersede AFTER INSERT ON connection_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION certificates_supersede_connected();
