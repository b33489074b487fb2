-- The API key of each device's local agent (balena's supervisor has one): the cloud API adds it
-- to every request it forwards, so the customer's token never reaches the device. Kept apart
-- from the devices table so a role that lists devices (a gateway's) never reads keys.
CREATE TABLE device_agent_keys (
    device_id   text PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    agent_key   text NOT NULL CONSTRAINT device_agent_keys_length
                CHECK (length(agent_key) BETWEEN 16 AND 512),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
