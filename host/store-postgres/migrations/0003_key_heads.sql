-- Airlock schema version 3: what recovery and the ledger's sweep read of an
-- idempotency key, beside its body, so that listing every key does not
-- fetch every stored result. Portable SQL, as version 1.
--
-- NULL in a row written before version 3 (or by a host still running an
-- older build during an upgrade): its body is read instead.
ALTER TABLE airlock_keys ADD COLUMN created_ms bigint;
ALTER TABLE airlock_keys ADD COLUMN in_flight boolean;
ALTER TABLE airlock_keys ADD COLUMN in_flight_host text;
