-- The PEM of each certificate the cloud API issues (POST /v1/enroll, the bundle), kept with its
-- row: replicas of the API share no directory, and a device enrolling again is told from a
-- re-key by its current certificate, whichever replica it reaches. NULL for the certificates
-- the Ansible modules record (vpn_provision, vpn_device_cert): they keep their files.
ALTER TABLE certificates ADD COLUMN pem text
    CONSTRAINT certificates_pem_format CHECK (pem LIKE '-----BEGIN CERTIFICATE-----%');

-- The API inserts the column and reads it back through its table grants on certificates
-- (SELECT in 0007, INSERT in 0008); it still updates no certificate. Gateways read serials
-- and dates only: a table grant would hand them every new column, so they keep exactly the
-- columns they had.
REVOKE SELECT ON certificates FROM iotistic_gateway;
GRANT SELECT (serial, device_id, fingerprint, not_before, not_after, revoked_at,
    revocation_reason, created_at) ON certificates TO iotistic_gateway;
