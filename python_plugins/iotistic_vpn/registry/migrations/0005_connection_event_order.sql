-- The order of a device's connection events, by the registry's clock. `at` stays what the
-- gateway claims (its clock, for history); comparing two gateways' claims would let one whose
-- clock is behind lose a device it really took last. A gateway sends with each event how old
-- it was when sent (its clock's difference, which no offset skews) and the registry records
-- its own now less that age here. Existing rows keep their claim as their order.
ALTER TABLE connection_events ADD COLUMN happened_at timestamptz;
UPDATE connection_events SET happened_at = at;
ALTER TABLE connection_events ALTER COLUMN happened_at SET NOT NULL,
    ALTER COLUMN happened_at SET DEFAULT now();
CREATE INDEX connection_events_device_order_idx ON connection_events (device_id, happened_at);
